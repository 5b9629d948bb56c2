#!/usr/bin/env python3
"""An MQTT 5 iotgw device for TestMQTT5Device (test/mqtt5_test.go).

It connects with MQTT 5 (paho-mqtt's MQTTv5) over mutual TLS with the given
client id, subscribes to device/+/response (overlapping subscriptions would
each deliver a copy),
publishes --count signed messages at QoS 1 (with --alias: the first with
Topic Alias 1 and its topic, the rest with the alias alone and an empty
topic), optionally publishes the raw message in --foreign-file on
--foreign-topic, and collects every reply. Once it has one reply per
message it prints "ready" and waits for stdin to close, still listening;
then it prints one JSON object: assigned (the Assigned Client Identifier,
or null), sent (its message ids), replies (each verified with K_down) and
other (topics of anything it received that is not its own reply).
"""
import argparse, json, os, sys, threading, time, uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python-device"))
import device  # noqa: E402  (build, verify, downlink_key)

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    for a in ("host", "ca", "cert", "key", "device", "secret-file", "client-id"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--alias", action="store_true")
    ap.add_argument("--foreign-topic")
    ap.add_argument("--foreign-file")
    ap.add_argument("--timeout", type=float, default=15)
    a = ap.parse_args()
    with open(a.secret_file, "rb") as fh:
        secret = fh.readline().rstrip(b"\r\n")
    k_down = device.downlink_key(secret)
    own = "device/%s/response" % a.device
    state = {"assigned": None, "sent": [], "replies": [], "other": []}
    lock, enough, connected = threading.Lock(), threading.Event(), threading.Event()
    kw = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION1} if hasattr(mqtt, "CallbackAPIVersion") else {}
    c = mqtt.Client(client_id=a.client_id, protocol=mqtt.MQTTv5, **kw)

    def on_connect(cl, _u, _f, rc, props=None):
        if rc != 0:
            print("connect refused: %s" % rc, file=sys.stderr); os._exit(1)
        if props is not None and hasattr(props, "AssignedClientIdentifier"):
            state["assigned"] = props.AssignedClientIdentifier
        cl.subscribe("device/+/response", 1)  # its own replies, and (the ACL says) nothing else

    def on_subscribe(cl, _u, _mid, _codes, _props=None):
        if connected.is_set():
            return
        connected.set()
        for i in range(a.count):
            mid = str(uuid.uuid4())
            state["sent"].append(mid)
            raw = device.build(secret, a.device, b'{"n":%d}' % i, int(time.time()), mid)
            topic = "device/%s/data" % a.device
            props = None
            if a.alias:
                props = Properties(PacketTypes.PUBLISH)
                props.TopicAlias = 1
                if i > 0:
                    topic = ""
            cl.publish(topic, raw, qos=1, properties=props)
        if a.foreign_topic:
            with open(a.foreign_file, "rb") as fh:
                cl.publish(a.foreign_topic, fh.read(), qos=1)

    def on_message(_cl, _u, msg):
        with lock:
            if msg.topic != own:
                state["other"].append(msg.topic); return
            try:
                f = device.verify(k_down, msg.payload)
                p = json.loads(f["payload"])
                state["replies"].append({"valid": f["device_id"][1:-1] == a.device, "in_reply_to": p.get("in_reply_to"),
                                         "status": p.get("status"), "error": p.get("error"), "body": p.get("body")})
            except ValueError as e:
                state["replies"].append({"valid": False, "error": str(e)})
            if len(state["replies"]) >= a.count:
                enough.set()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.tls_set(ca_certs=a.ca, certfile=a.cert, keyfile=a.key)
    c.connect(a.host, a.port, clean_start=True)
    c.loop_start()
    if not enough.wait(a.timeout):
        print("timeout: %d replies of %d" % (len(state["replies"]), a.count), file=sys.stderr)
    print("ready", flush=True)
    sys.stdin.read()  # the test closes stdin when it is done publishing elsewhere
    c.disconnect(); c.loop_stop()
    with lock:
        print(json.dumps(state), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
