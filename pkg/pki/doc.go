// Package pki creates the certificates that let devices, the gateway and
// the Mosquitto broker authenticate one another with mutual TLS.
//
// It sits outside the message pipeline: an operator runs it once (Init) to
// create a private CA with a broker server certificate and the gateway's
// client certificate, then once per device: Issue makes the device's key
// here, while Signer signs a certificate signing request made on the
// device, whose key never leaves it (CheckCSR says what is accepted). The broker accepts any
// client certificate signed by the CA and uses its Common Name as the MQTT
// username, so the CN of a device certificate is the device id that the
// broker's ACL (mosquitto/acl) checks topics against.
//
// Keys are ECDSA P-256, written as PKCS#8 PEM ("PRIVATE KEY"); certificates
// are PEM. Every file is written atomically (a temporary file in the same
// directory, synced, then renamed or linked into place), so a crash never
// leaves half a key. Files that must never be replaced (ca.key, a device's
// certificate and key) are linked into place, which fails if the name
// exists: an existing CA or device is never overwritten.
//
// File modes: certificates 0644, private keys 0600, except broker.key,
// which is 0640 and, when a group named "mosquitto" exists, owned by that
// group. Mosquitto started as root drops to the mosquitto user before it
// reads its certificates, so it must be able to read ca.crt, broker.crt and
// broker.key (and the directories leading to them). Changing the group
// needs root or membership of the group; a failure to change it is ignored.
//
// The layout of a PKI directory is:
//
//	ca.crt ca.key                   the CA (10 years)
//	broker.crt broker.key           the broker's server certificate (2 years)
//	gateway.crt gateway.key         the gateway's client certificate, CN "gateway" (2 years)
//	devices/<id>.crt devices/<id>.key  one client certificate per device, CN <id> (2 years);
//	                                only the .crt for a device signed from its CSR
//	crl.pem                         the CRL (Mosquitto's crlfile), signed by the CA: empty
//	                                from Init, extended by Revoke; 0644, valid until the CA expires
package pki
