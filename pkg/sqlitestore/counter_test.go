package sqlitestore

import (
	"strconv"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/outbox"
)

func counterRec(dev string, c int64) *outbox.Record {
	return &outbox.Record{DeviceID: dev, MessageID: "m-" + strconv.FormatInt(c, 10), Timestamp: outbox.CounterTimestamp([]byte(strconv.FormatInt(c, 10))),
		ID: outbox.CounterID(c), Payload: []byte(`{}`), ReceivedAt: t0}
}

// TestCounterBound: the bound is raised in the commit that inserts a
// counter-mode row; a counter at or below it is refused (Refusal.Counter)
// and not inserted, in one commit and across commits and reopens; it has
// no seen row; a timestamp-mode row beside it is unaffected; ResetCounter
// sets it back to 0.
func TestCounterBound(t *testing.T) {
	cfg := testConfig(t, nil)
	s := openStore(t, cfg)
	res, err := s.Commit(bg(), []*outbox.Record{counterRec("c1", 5), counterRec("c1", 5), counterRec("c1", 3), counterRec("c1", 7), rec("t1", 1, t0.Add(time.Hour))}, nil, -1)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Refused) != 2 || !res.Refused[0].Counter || res.Refused[1].Rec.Timestamp != "c3" {
		t.Fatalf("refused %+v, want the second 5 and the 3, as counter replays", res.Refused)
	}
	if ids := seenIDs(t, s, t0); len(ids) != 1 {
		t.Fatalf("seen = %v: a counter-mode row has no replay id", ids)
	}
	s.Close()

	s = openStore(t, cfg)
	if b, err := s.CounterBound(bg(), "c1"); err != nil || b != 7 {
		t.Fatalf("bound after reopen = %d, %v; want 7", b, err)
	}
	for _, c := range []int64{7, 6, 1} {
		res, err := s.Commit(bg(), []*outbox.Record{counterRec("c1", c)}, nil, -1)
		if err != nil || len(res.Refused) != 1 || !res.Refused[0].Counter {
			t.Fatalf("counter %d at or below 7: %+v, %v", c, res.Refused, err)
		}
	}
	if res, err := s.Commit(bg(), []*outbox.Record{counterRec("c1", 8), counterRec("c2", 1)}, nil, -1); err != nil || len(res.Refused) != 0 {
		t.Fatalf("counters 8 and another device's 1: %+v, %v", res.Refused, err)
	}
	got, err := s.Pending(bg(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var stamps []string
	for _, r := range got {
		stamps = append(stamps, r.Timestamp)
	}
	if want := "[c5 c7 1727712001 c8 c1]"; len(got) != 5 || fmtList(stamps) != want {
		t.Fatalf("pending %v, want %s", stamps, want)
	}
	if old, err := s.ResetCounter(bg(), "c1", 0); err != nil || old != 8 {
		t.Fatalf("ResetCounter = %d, %v; want 8", old, err)
	}
	if res, err := s.Commit(bg(), []*outbox.Record{counterRec("c1", 1)}, nil, -1); err != nil || len(res.Refused) != 0 {
		t.Fatalf("counter 1 after the reset: %+v, %v", res.Refused, err)
	}
}

func fmtList(s []string) string {
	out := "["
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out + "]"
}

// TestWriterRefusedLastKeepsSeq: a batch whose last record is refused (a
// counter-mode copy) still advances the Writer's last seq to the rows it
// inserted: before, the next commit took the batch's own rows for rows
// another process had added (Result.Foreign) and handed them to the
// forwarder a second time.
func TestWriterRefusedLastKeepsSeq(t *testing.T) {
	cfg := testConfig(t, nil)
	s := openStore(t, cfg)
	r := newWriter(s, cfg, 0, 0)
	appendOK(t, r.w, counterRec("c1", 1), counterRec("c1", 1)) // one batch: the copy is refused
	r.start(t)
	if b := r.nextCommit(t); len(b) != 1 || b[0].Timestamp != "c1" {
		t.Fatalf("first commit %+v, want counter 1 alone", b)
	}
	appendOK(t, r.w, counterRec("c1", 2))
	if b := r.nextCommit(t); len(b) != 1 || b[0].Timestamp != "c2" {
		t.Fatalf("second commit %+v, want counter 2", b)
	}
	if n := len(r.foreign); n != 0 {
		t.Fatalf("%d Foreign calls: the Writer's own rows were taken for another process's", n)
	}
}
