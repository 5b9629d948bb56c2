package backendsig_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/backendsig"
)

const testKey = "5f0c9e8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766"

// TestSignatureVectors: Sign reproduces testdata/backend-signature.json,
// whose signatures were computed with Python's hmac module, not this code.
func TestSignatureVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/backend-signature.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Key     string
		Vectors []struct {
			Name, Scheme, Method, Target, Body, Signature string
			DeviceID                                      string `json:"device_id"`
			IdempotencyKey                                string `json:"idempotency_key"`
			DeviceTimestamp                               string `json:"device_timestamp"`
			Seq                                           string `json:"seq"`
			SigningBytes                                  string `json:"signing_bytes"`
			Timestamp                                     int64
		}
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	schemes := map[string]int{}
	for _, v := range file.Vectors {
		schemes[v.Scheme]++
	}
	if schemes[backendsig.SchemeV2] < 3 || schemes[backendsig.SchemeV1] < 3 || len(schemes) != 2 {
		t.Fatalf("vectors per scheme: %v, want 3 or more of each of v2 and v1", schemes)
	}
	for _, v := range file.Vectors {
		t.Run(v.Scheme+"/"+v.Name, func(t *testing.T) {
			h := backendsig.Signed{DeviceID: v.DeviceID, IdempotencyKey: v.IdempotencyKey, DeviceTimestamp: v.DeviceTimestamp, Seq: v.Seq}
			sb := backendsig.SigningBytes(v.Scheme, v.Method, v.Target, h, v.Timestamp, []byte(v.Body))
			if string(sb) != v.SigningBytes {
				t.Errorf("SigningBytes = %q, want %q", sb, v.SigningBytes)
			}
			if got := backendsig.Sign([]byte(file.Key), v.Scheme, v.Method, v.Target, h, v.Timestamp, []byte(v.Body)); got != v.Signature {
				t.Errorf("Sign = %s, want %s", got, v.Signature)
			}
			r := httptest.NewRequest(v.Method, v.Target, strings.NewReader(v.Body))
			for name, val := range map[string]string{"X-Device-Id": v.DeviceID, "Idempotency-Key": v.IdempotencyKey,
				"X-Device-Timestamp": v.DeviceTimestamp, "X-Iotgw-Seq": v.Seq} {
				if val != "" {
					r.Header.Set(name, val)
				}
			}
			r.Header.Set(backendsig.TimestampHeader, fmt.Sprint(v.Timestamp))
			r.Header.Set(backendsig.SignatureHeader, v.Signature)
			if err := backendsig.VerifyRequest([]byte(file.Key), v.Scheme, r, []byte(v.Body), time.Unix(v.Timestamp+60, 0), 5*time.Minute); err != nil {
				t.Errorf("VerifyRequest: %v", err)
			}
		})
	}
}

// TestVerifyRequestRejects: every field is covered (under v2 also
// X-Device-Timestamp and X-Iotgw-Seq), the timestamp must be fresh, a
// malformed or repeated header is refused, and so is a signature of
// another scheme than the one expected (no downgrade to v1).
func TestVerifyRequestRejects(t *testing.T) {
	key := []byte(testKey)
	ts := int64(1727712005)
	body := []byte(`{"temperature":22.5}`)
	signed := backendsig.Signed{DeviceID: "sensor_001", IdempotencyKey: "550e8400-e29b-41d4-a716-446655440000",
		DeviceTimestamp: "1727712000", Seq: "42"}
	good := func() *http.Request {
		r := httptest.NewRequest("POST", "/ingest/sensor_001", nil)
		r.Header.Set("X-Device-Id", signed.DeviceID)
		r.Header.Set("Idempotency-Key", signed.IdempotencyKey)
		r.Header.Set("X-Device-Timestamp", signed.DeviceTimestamp)
		r.Header.Set("X-Iotgw-Seq", signed.Seq)
		r.Header.Set(backendsig.TimestampHeader, fmt.Sprint(ts))
		r.Header.Set(backendsig.SignatureHeader, backendsig.Sign(key, backendsig.SchemeV2, "POST", "/ingest/sensor_001", signed, ts, body))
		return r
	}
	now := time.Unix(ts, 0)
	tests := []struct {
		name string
		edit func(r *http.Request) (*http.Request, []byte, time.Time)
		want error
	}{
		{"genuine", func(r *http.Request) (*http.Request, []byte, time.Time) { return r, body, now }, nil},
		{"genuine, 4 min late", func(r *http.Request) (*http.Request, []byte, time.Time) { return r, body, now.Add(4 * time.Minute) }, nil},
		{"tampered body", func(r *http.Request) (*http.Request, []byte, time.Time) {
			return r, []byte(`{"temperature":99.5}`), now
		}, backendsig.ErrSignatureInvalid},
		{"tampered device id", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Device-Id", "sensor_002")
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"tampered idempotency key", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("Idempotency-Key", "650e8400-e29b-41d4-a716-446655440000")
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"other path", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r2 := httptest.NewRequest("POST", "/ingest/sensor_002", nil)
			r2.Header = r.Header
			return r2, body, now
		}, backendsig.ErrSignatureInvalid},
		{"other method", func(r *http.Request) (*http.Request, []byte, time.Time) { r.Method = "PUT"; return r, body, now }, backendsig.ErrSignatureInvalid},
		{"timestamp header moved, signature kept", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(backendsig.TimestampHeader, fmt.Sprint(ts+1))
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"replayed 6 min later", func(r *http.Request) (*http.Request, []byte, time.Time) { return r, body, now.Add(6 * time.Minute) }, backendsig.ErrSignatureStale},
		{"from 6 min in the future", func(r *http.Request) (*http.Request, []byte, time.Time) { return r, body, now.Add(-6 * time.Minute) }, backendsig.ErrSignatureStale},
		{"wrong key", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(backendsig.SignatureHeader, backendsig.Sign([]byte(testKey[1:]+"0"), backendsig.SchemeV2, "POST", "/ingest/sensor_001", signed, ts, body))
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"no signature", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Del(backendsig.SignatureHeader)
			return r, body, now
		}, backendsig.ErrSignatureMissing},
		{"no timestamp", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Del(backendsig.TimestampHeader)
			return r, body, now
		}, backendsig.ErrSignatureMissing},
		{"uppercase hex", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(backendsig.SignatureHeader, "v2="+strings.ToUpper(strings.TrimPrefix(r.Header.Get(backendsig.SignatureHeader), "v2=")))
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"unknown version", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(backendsig.SignatureHeader, "v3="+strings.TrimPrefix(r.Header.Get(backendsig.SignatureHeader), "v2="))
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"v2 digits relabelled v1", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(backendsig.SignatureHeader, "v1="+strings.TrimPrefix(r.Header.Get(backendsig.SignatureHeader), "v2="))
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"genuine v1 signature, v2 expected (downgrade)", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(backendsig.SignatureHeader, backendsig.Sign(key, backendsig.SchemeV1, "POST", "/ingest/sensor_001", signed, ts, body))
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"tampered X-Device-Timestamp", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Device-Timestamp", "1")
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"tampered X-Iotgw-Seq", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Iotgw-Seq", "999999")
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"X-Iotgw-Seq removed", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Del("X-Iotgw-Seq")
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"second X-Iotgw-Seq header", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Add("X-Iotgw-Seq", "43")
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"timestamp with a sign", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(backendsig.TimestampHeader, "+"+fmt.Sprint(ts))
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"second device id header", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Add("X-Device-Id", "sensor_002")
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		// X-Message-Id is not in the signing bytes: it must repeat the
		// signed Idempotency-Key, or a captured request replays with a new
		// message id under the same signature.
		{"X-Message-Id same as Idempotency-Key", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Message-Id", "550e8400-e29b-41d4-a716-446655440000")
			return r, body, now
		}, nil},
		{"tampered X-Message-Id", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Message-Id", "650e8400-e29b-41d4-a716-446655440000")
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
		{"second X-Message-Id header", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Message-Id", "550e8400-e29b-41d4-a716-446655440000")
			r.Header.Add("X-Message-Id", "650e8400-e29b-41d4-a716-446655440000")
			return r, body, now
		}, backendsig.ErrSignatureInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, b, at := tc.edit(good())
			err := backendsig.VerifyRequest(key, backendsig.SchemeV2, r, b, at, 5*time.Minute)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("VerifyRequest = %v, want %v", err, tc.want)
			}
		})
	}
	// What v1 leaves unsigned, and why v2 is the default: a v1 verifier
	// takes a changed X-Iotgw-Seq or X-Device-Timestamp.
	r := good()
	r.Header.Set(backendsig.SignatureHeader, backendsig.Sign(key, backendsig.SchemeV1, "POST", "/ingest/sensor_001", signed, ts, body))
	r.Header.Set("X-Iotgw-Seq", "999999")
	r.Header.Set("X-Device-Timestamp", "1")
	if err := backendsig.VerifyRequest(key, backendsig.SchemeV1, r, body, now, 5*time.Minute); err != nil {
		t.Fatalf("v1 verifier on changed unsigned headers: %v, want nil (v1 does not cover them)", err)
	}
	if err := backendsig.VerifyRequest(key, "v3", good(), body, now, 5*time.Minute); err == nil {
		t.Fatal("VerifyRequest with scheme v3: nil, want an error")
	}
}

// FuzzVerifyRequest: VerifyRequest never panics, and it accepts only a
// request whose signature is exactly Sign, under the scheme expected,
// over what it received.
func FuzzVerifyRequest(f *testing.F) {
	f.Add(true, "/ingest/sensor_001", "sensor_001", "550e8400-e29b-41d4-a716-446655440000", "", "", "1727712005",
		"v1=08b194b1616266afd6734c288244579cea3e437cc2f2ce2868bae66744b5c66f", []byte(`{"temperature":22.5}`))
	f.Add(true, "/batch", "", "", "", "", "1727712005", "v1=b29420544fa28c15df27096d91328189c9f1f444b1ebb958d20aacc2ca9d5dae", []byte(`[]`))
	f.Add(false, "/ingest/sensor_001", "sensor_001", "550e8400-e29b-41d4-a716-446655440000", "1727712000", "42", "1727712005",
		"v2=", []byte(`{"temperature":22.5}`))
	f.Add(false, "/x?y=1", "d", "k", "1", "2", "01", "v2=", []byte{})
	key := []byte("6b2f0f4e1c9a8d7e5b3a29f1c0d4e8b7a6f5e4d3c2b1a09f8e7d6c5b4a392817")
	f.Fuzz(func(t *testing.T, v1 bool, target, dev, idem, dts, seq, ts, sig string, body []byte) {
		if !strings.HasPrefix(target, "/") || strings.ContainsAny(target, " \r\n#") {
			return
		}
		r, err := http.NewRequest("POST", "http://127.0.0.1"+target, nil)
		if err != nil {
			return
		}
		for k, v := range map[string]string{"X-Device-Id": dev, "Idempotency-Key": idem, "X-Device-Timestamp": dts,
			"X-Iotgw-Seq": seq, backendsig.TimestampHeader: ts, backendsig.SignatureHeader: sig} {
			if v != "" {
				r.Header[k] = []string{v}
			}
		}
		scheme := backendsig.SchemeV2
		if v1 {
			scheme = backendsig.SchemeV1
		}
		if backendsig.VerifyRequest(key, scheme, r, body, time.Unix(1727712005, 0), 100*365*24*time.Hour) != nil {
			return
		}
		n, err := strconv.ParseInt(ts, 10, 64)
		if err != nil {
			t.Fatalf("accepted timestamp %q is not decimal: %v", ts, err)
		}
		h := backendsig.Signed{DeviceID: dev, IdempotencyKey: idem, DeviceTimestamp: dts, Seq: seq}
		if want := backendsig.Sign(key, scheme, "POST", r.URL.RequestURI(), h, n, body); sig != want {
			t.Fatalf("accepted %q, Sign gives %q", sig, want)
		}
	})
}

// TestVerifyRequestCounter: a counter-mode message's X-Device-Counter is
// signed under v2 in X-Device-Timestamp's place, as "counter:" and the
// value: tampering with it, moving it into X-Device-Timestamp, or sending
// both headers is refused.
func TestVerifyRequestCounter(t *testing.T) {
	key := []byte(testKey)
	ts := int64(1727712005)
	body := []byte(`{"temperature":22.5}`)
	signed := backendsig.Signed{DeviceID: "sensor_001", IdempotencyKey: "550e8400-e29b-41d4-a716-446655440000", DeviceCounter: "42", Seq: "7"}
	req := func(edit func(h http.Header)) *http.Request {
		r := httptest.NewRequest("POST", "/ingest/sensor_001", nil)
		r.Header.Set("X-Device-Id", signed.DeviceID)
		r.Header.Set("Idempotency-Key", signed.IdempotencyKey)
		r.Header.Set("X-Device-Counter", signed.DeviceCounter)
		r.Header.Set("X-Iotgw-Seq", signed.Seq)
		r.Header.Set(backendsig.TimestampHeader, fmt.Sprint(ts))
		r.Header.Set(backendsig.SignatureHeader, backendsig.Sign(key, backendsig.SchemeV2, "POST", "/ingest/sensor_001", signed, ts, body))
		if edit != nil {
			edit(r.Header)
		}
		return r
	}
	now := time.Unix(ts, 0)
	if err := backendsig.VerifyRequest(key, backendsig.SchemeV2, req(nil), body, now, 5*time.Minute); err != nil {
		t.Fatalf("genuine counter-mode request: %v", err)
	}
	if got := string(backendsig.SigningBytes(backendsig.SchemeV2, "POST", "/ingest/sensor_001", signed, ts, body)); !strings.Contains(got, "\ncounter:42\n7\n") {
		t.Fatalf("signing bytes %q lack field 6 \"counter:42\"", got)
	}
	for name, edit := range map[string]func(h http.Header){
		"tampered counter":          func(h http.Header) { h.Set("X-Device-Counter", "43") },
		"counter moved to the time": func(h http.Header) { h.Del("X-Device-Counter"); h.Set("X-Device-Timestamp", "42") },
		"both headers":              func(h http.Header) { h.Set("X-Device-Timestamp", "1727712000") },
	} {
		if err := backendsig.VerifyRequest(key, backendsig.SchemeV2, req(edit), body, now, 5*time.Minute); !errors.Is(err, backendsig.ErrSignatureInvalid) {
			t.Errorf("%s: %v, want ErrSignatureInvalid", name, err)
		}
	}
}
