#!/usr/bin/env python3
"""Make this device's key and a certificate signing request, on the device.

    python3 make_csr.py --device sensor_007 --key-out sensor_007.key --csr-out sensor_007.csr

The key (ECDSA P-256, PKCS#8 PEM) is created 0600 and never overwritten;
it never leaves the device. Send the CSR (CN = the device id) to the
operator, who signs it with "iotgw device add ID --csr FILE" or "iotgw pki
sign ID --csr FILE" and sends back certs/devices/<id>.crt. Needs the
`cryptography` package (Debian: python3-cryptography). With OpenSSL alone:
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes
-keyout KEY -subj /CN=ID -out CSR.
"""
import argparse, os, re, sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for a in ("device", "key-out", "csr-out"):
        ap.add_argument("--" + a, required=True)
    a = ap.parse_args()
    if not re.fullmatch(r"(?!\.)[A-Za-z0-9_.-]{1,64}", a.device):
        ap.error("device id must be 1-64 characters of [A-Za-z0-9_.-], not starting with a dot")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, a.device)]))
           .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(a.key_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        print("%s: %s" % (a.key_out, e.strerror), file=sys.stderr); return 1
    with os.fdopen(fd, "wb") as f:
        f.write(pem); f.flush(); os.fsync(f.fileno())
    try:
        with open(a.csr_out, "xb") as f:
            f.write(csr.public_bytes(serialization.Encoding.PEM))
    except OSError as e:
        os.unlink(a.key_out)
        print("%s: %s" % (a.csr_out, e.strerror), file=sys.stderr); return 1
    print("wrote %s\nwrote %s" % (a.key_out, a.csr_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
