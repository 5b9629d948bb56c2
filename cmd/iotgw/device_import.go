package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/audit"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/storage"
)

func init() { deviceSubcommands = append(deviceSubcommands, newDeviceImportCmd, newDeviceExportCmd) }

// Import and export file formats.
const (
	formatCSV   = "csv"
	formatJSONL = "jsonl"
)

// importColumns are the columns (CSV header names, JSON keys) import
// reads. export writes id, enabled, created_at and revoked_at.
var importColumns = map[string]bool{
	"id": true, "secret": true, "csr": true, "enabled": true,
	"created_at": true, "revoked_at": true, "freshness": true,
}

// importRow is one device line of an import file.
type importRow struct {
	line   int
	id     string
	secret string
	csr    string
	// enabled is "", "true" or "false" as written.
	enabled   string
	revokedAt string
	freshness string
}

// importDevice is a checked row.
type importDevice struct {
	line      int
	dev       registry.NewDevice
	generated bool
	csr       []byte
}

// lineError is what is wrong with one line of an import file.
type lineError struct {
	line int
	msg  string
}

// importFormat returns the format of path: --format, else its extension
// (.csv; .jsonl, .ndjson, .json), else the first non-blank byte of data
// ('{' is JSON lines).
func importFormat(format, path string, data []byte) (string, error) {
	switch format {
	case formatCSV, formatJSONL:
		return format, nil
	case "":
	default:
		return "", usagef("--format must be csv or jsonl, not %q", format)
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".csv":
		return formatCSV, nil
	case ".jsonl", ".ndjson", ".json":
		return formatJSONL, nil
	}
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return formatJSONL, nil
	}
	return formatCSV, nil
}

// parseCSV reads a CSV import: a header row naming the columns (id first
// or anywhere; see importColumns), then one device per record. A quoted
// field may span lines (a PEM CSR); lines starting with # are comments.
func parseCSV(data []byte) ([]importRow, []lineError) {
	r := csv.NewReader(bytes.NewReader(data))
	r.Comment = '#'
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		return nil, []lineError{{1, "empty file: want a header row such as \"id,secret,csr\""}}
	}
	if err != nil {
		return nil, []lineError{{csvLine(err, 1), err.Error()}}
	}
	hline, _ := r.FieldPos(0)
	cols := map[string]int{}
	var errs []lineError
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		if _, dup := cols[h]; dup {
			errs = append(errs, lineError{hline, fmt.Sprintf("column %q named twice", h)})
		} else if !importColumns[h] {
			errs = append(errs, lineError{hline, fmt.Sprintf("unknown column %q (want id, secret, csr, enabled, created_at, revoked_at)", h)})
		}
		cols[h] = i + 1
	}
	if cols["id"] == 0 {
		errs = append(errs, lineError{hline, "no id column in the header row"})
	}
	if len(errs) > 0 {
		return nil, errs
	}
	field := func(rec []string, name string) string {
		if i := cols[name]; i != 0 && i <= len(rec) {
			return rec[i-1]
		}
		return ""
	}
	var rows []importRow
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, lineError{csvLine(err, 0), err.Error()})
			continue
		}
		line, _ := r.FieldPos(0)
		if len(rec) != len(header) {
			errs = append(errs, lineError{line, fmt.Sprintf("%d fields, the header has %d", len(rec), len(header))})
			continue
		}
		rows = append(rows, importRow{
			line: line, id: field(rec, "id"), secret: field(rec, "secret"), csr: field(rec, "csr"),
			enabled: field(rec, "enabled"), revokedAt: field(rec, "revoked_at"), freshness: field(rec, "freshness"),
		})
	}
	return rows, errs
}

// csvLine is the line of a csv.ParseError, else def.
func csvLine(err error, def int) int {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return pe.StartLine
	}
	return def
}

// jsonRow is one JSON line of an import (or of a secrets file).
type jsonRow struct {
	ID        *string `json:"id"`
	Secret    string  `json:"secret,omitempty"`
	CSR       string  `json:"csr,omitempty"`
	Enabled   *bool   `json:"enabled,omitempty"`
	CreatedAt string  `json:"created_at,omitempty"`
	RevokedAt string  `json:"revoked_at,omitempty"`
	Freshness string  `json:"freshness,omitempty"`
}

// maxJSONLine bounds one JSON line (a CSR is at most pki.MaxCSRSize).
const maxJSONLine = 1 << 20

// parseJSONL reads JSON lines: one object per line with the keys of
// importColumns; blank lines are skipped.
func parseJSONL(data []byte) ([]importRow, []lineError) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), maxJSONLine)
	var rows []importRow
	var errs []lineError
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var j jsonRow
		if err := dec.Decode(&j); err != nil {
			errs = append(errs, lineError{line, "not a JSON object of id, secret, csr, enabled, created_at, revoked_at: " + err.Error()})
			continue
		}
		if dec.More() {
			errs = append(errs, lineError{line, "more than one JSON value on the line"})
			continue
		}
		if j.ID == nil {
			errs = append(errs, lineError{line, "no \"id\""})
			continue
		}
		row := importRow{line: line, id: *j.ID, secret: j.Secret, csr: j.CSR, revokedAt: j.RevokedAt, freshness: j.Freshness}
		if j.Enabled != nil {
			row.enabled = fmt.Sprint(*j.Enabled)
		}
		rows = append(rows, row)
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, lineError{line + 1, err.Error()})
	}
	return rows, errs
}

// checkRows turns rows into devices, generating the missing secrets, and
// lists what is wrong with each line (a CSR is checked for its id here;
// the CA signs it inside the transaction).
func checkRows(rows []importRow) ([]importDevice, []lineError, error) {
	var out []importDevice
	var errs []lineError
	first := map[string]int{}
	for _, row := range rows {
		bad := func(format string, a ...any) { errs = append(errs, lineError{row.line, fmt.Sprintf(format, a...)}) }
		id := row.id
		switch {
		case !envelope.ValidDeviceID(id):
			bad("bad device id %q: %v", id, registry.ErrBadID)
			continue
		case id == pki.GatewayIdentity:
			bad("device id %q is reserved: it is the gateway's identity at the broker", id)
			continue
		}
		if l, ok := first[id]; ok {
			bad("device %s is listed twice (first on line %d)", id, l)
			continue
		}
		first[id] = row.line
		ok := true
		d := importDevice{line: row.line, dev: registry.NewDevice{ID: id, Secret: row.secret}}
		if row.secret == "" {
			s, err := registry.NewSecret()
			if err != nil {
				return nil, nil, err
			}
			d.dev.Secret, d.generated = s, true
		} else if !registry.ValidSecret(row.secret) {
			bad("device %s: %v", id, registry.ErrBadSecret)
			ok = false
		}
		switch strings.ToLower(strings.TrimSpace(row.enabled)) {
		case "", "true":
		case "false":
			d.dev.Disabled = true
		default:
			bad("device %s: enabled must be true or false, not %q", id, row.enabled)
			ok = false
		}
		if strings.TrimSpace(row.revokedAt) != "" {
			bad("device %s is revoked (revoked_at %s): a revoked device is not imported; register it under a new id", id, row.revokedAt)
			ok = false
		}
		if fresh, err := registry.CheckFreshness(strings.ToLower(strings.TrimSpace(row.freshness))); err != nil {
			bad("device %s: freshness %q: must be empty, \"timestamp\" or \"counter\"", id, row.freshness)
			ok = false
		} else {
			d.dev.Freshness = fresh
		}
		if row.csr != "" {
			if _, _, err := pki.CheckCSR([]byte(row.csr), id); err != nil {
				bad("device %s: %v", id, err)
				ok = false
			}
			d.csr = []byte(row.csr)
		}
		if ok {
			out = append(out, d)
		}
	}
	return out, errs, nil
}

func newDeviceImportCmd() *cobra.Command {
	var (
		format, secretsOut, certsDir string
		skipExisting                 bool
		days                         int
	)
	cmd := &cobra.Command{
		Use:   "import FILE",
		Short: "Register many devices from a CSV or JSON-lines file, all or nothing",
		Long: `import registers every device in FILE in one transaction, on either storage
engine: if any line is bad, or any device already exists (without
--skip-existing), nothing is imported and every bad line is listed with its
line number.

FILE is CSV with a header row, or JSON lines (one object per line); the
format comes from --format, else the extension (.csv, .jsonl/.ndjson/.json),
else the first character ('{' is JSON lines). Columns (CSV header names,
JSON keys):

  id          the device id (required)
  secret      its shared secret; when empty a secret is generated
  csr         a PEM certificate signing request made on the device (CN =
              the id); its client certificate is signed with the CA in
              --certs, valid for --days (default 730), as "iotgw pki sign"
  enabled     true (default) or false
  created_at  ignored (written by export; the registry stamps the import time)
  revoked_at  must be empty: a revoked device is not imported
  freshness   empty or "timestamp" (the default), or "counter" (the device
              proves freshness with a counter: docs/PROTOCOL.md, section 2a)

Generated secrets are written to --secrets-out, a new file created 0600
(in FILE's format: id,secret), never to the terminal; it is required when
any line has no secret, and is written before the transaction commits (and
removed if it does not). Certificates are signed, all at once, just
before the transaction (for the devices it will add) and removed if it
does not commit. Secrets are sealed under the KEK as by device add.
Each device added gets one audit entry (device.import, or
device.import.csr when a certificate was signed). A running gateway serves
the new devices within its registry refresh interval.`,
		Example: `  iotgw device import fleet.csv --secrets-out fleet-secrets.csv --db /var/lib/iotgw/registry.db
  iotgw device import fleet.jsonl --certs /etc/iotgw/certs --skip-existing --secrets-out new.jsonl
  iotgw device export --db old.db > fleet.csv && iotgw device import fleet.csv --secrets-out s.csv --db new.db`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("%s: want exactly one FILE, got %d arguments", cmd.CommandPath(), len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if days < 1 || days > pki.MaxCSRDays {
				return usagef("--days: %v (got %d)", pki.ErrBadValidity, days)
			}
			data, err := readImport(cmd, path)
			if err != nil {
				return err
			}
			f, err := importFormat(format, path, data)
			if err != nil {
				return err
			}
			var rows []importRow
			var errs []lineError
			if f == formatCSV {
				rows, errs = parseCSV(data)
			} else {
				rows, errs = parseJSONL(data)
			}
			devs, cerrs, err := checkRows(rows)
			if err != nil {
				return err
			}
			errs = append(errs, cerrs...)
			needSecrets, needCA := false, false
			for _, d := range devs {
				needSecrets = needSecrets || d.generated
				needCA = needCA || d.csr != nil
			}
			if len(errs) == 0 && len(devs) == 0 {
				return fmt.Errorf("%s: no devices", path)
			}
			if len(errs) > 0 {
				return reportBadLines(cmd.ErrOrStderr(), path, errs)
			}
			if needSecrets && secretsOut == "" {
				return usagef("some devices in %s have no secret: name a new file for their generated secrets with --secrets-out (they are never printed)", path)
			}
			if secretsOut != "" {
				if _, err := os.Lstat(secretsOut); err == nil {
					return fmt.Errorf("--secrets-out %s already exists; name a new file", secretsOut)
				}
			}
			var signer *pki.Signer
			if needCA {
				if signer, err = pki.OpenSigner(certsDir); err != nil {
					return fmt.Errorf("%s has CSRs: %w", path, err)
				}
			}
			imp := &importer{devs: devs, format: f, secretsOut: secretsOut, certsDir: certsDir, signer: signer, days: days, now: time.Now()}
			return imp.run(cmd, skipExisting)
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "csv or jsonl (default: from the file name, else its first character)")
	cmd.Flags().StringVar(&secretsOut, "secrets-out", "", "new file (created 0600) for the generated secrets, in the import's format")
	cmd.Flags().BoolVar(&skipExisting, "skip-existing", false, "leave devices that already exist as they are instead of refusing the import")
	cmd.Flags().StringVar(&certsDir, "certs", "certs", "PKI directory whose CA signs the certificates of lines with a csr")
	addDaysFlag(cmd.Flags(), &days)
	return cmd
}

// readImport reads FILE ("-" is stdin), at most 1 GiB.
func readImport(cmd *cobra.Command, path string) ([]byte, error) {
	r := cmd.InOrStdin()
	if path != "-" {
		f, err := os.Open(path) //nolint:gosec // G304: the operator names the import file
		if err != nil {
			return nil, fmt.Errorf("import: %w", err)
		}
		defer f.Close()
		r = f
	}
	const max = 1 << 30
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	if len(data) > max {
		return nil, fmt.Errorf("import %s: larger than 1 GiB; split it", path)
	}
	return data, nil
}

// reportBadLines lists every bad line on w and returns the one-line error.
func reportBadLines(w io.Writer, path string, errs []lineError) error {
	for _, e := range errs {
		fmt.Fprintf(w, "%s:%d: %s\n", path, e.line, e.msg)
	}
	return fmt.Errorf("%s: %s; nothing imported", path, plural(len(errs), "bad line"))
}

// plural is "1 device" or "n devices".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// importer carries one checked import through the transaction.
type importer struct {
	devs       []importDevice
	format     string
	secretsOut string
	certsDir   string
	signer     *pki.Signer
	days       int
	now        time.Time

	// written are the files made for the transaction (certificates, the
	// secrets file), removed if it does not commit.
	written      []string
	wroteSecrets bool
}

func (imp *importer) run(cmd *cobra.Command, skipExisting bool) error {
	byID := make(map[string]importDevice, len(imp.devs))
	devs := make([]registry.NewDevice, len(imp.devs))
	for i, d := range imp.devs {
		devs[i] = d.dev
		byID[d.dev.ID] = d
	}
	var added []registry.NewDevice
	var skipped []string
	var certs int
	s, err := storeOf(cmd)
	if err != nil {
		return err
	}
	err = withRegistry(cmd, true, func(ctx context.Context, r *registry.Registry) error {
		warnUnsealed(cmd, r)
		// Certificates are signed before the transaction, for the devices
		// that do not exist yet, so that the registry's write lock is not
		// held while thousands are written; the transaction then checks
		// that it adds exactly those devices.
		signed, err := imp.signNew(ctx, r, skipExisting)
		if err != nil {
			return err
		}
		certs = len(signed)
		added, skipped, err = r.AddMany(ctx, devs, registry.BulkOptions{
			SkipExisting: skipExisting,
			BeforeCommit: func(a []registry.NewDevice) error { return imp.beforeCommit(a, byID, signed) },
		})
		return err
	})
	if err != nil {
		imp.undo()
		var ee *registry.ExistingError
		if errors.As(err, &ee) {
			return fmt.Errorf("%w; nothing imported (use --skip-existing to leave them as they are)", err)
		}
		return fmt.Errorf("%w; nothing imported", err)
	}
	auditErr := imp.audit(cmd.Context(), s, added, byID)
	out := cmd.ErrOrStderr()
	fmt.Fprintf(out, "imported %s", plural(len(added), "device"))
	if len(skipped) > 0 {
		fmt.Fprintf(out, "; skipped %d that already existed", len(skipped))
	}
	if certs > 0 {
		fmt.Fprintf(out, "; signed %s in %s", plural(certs, "certificate"), filepath.Join(imp.certsDir, "devices"))
	}
	fmt.Fprintln(out)
	if imp.wroteSecrets {
		fmt.Fprintln(out, "wrote", imp.secretsOut)
	}
	return auditErr
}

// signNew signs, in one batch, the certificates of the devices with a CSR
// that are not registered yet (all of them, without skipExisting: the
// transaction refuses existing ones anyway). It returns their ids.
func (imp *importer) signNew(ctx context.Context, r *registry.Registry, skipExisting bool) (map[string]bool, error) {
	var reqs []pki.CSRRequest
	for _, d := range imp.devs {
		if d.csr != nil {
			reqs = append(reqs, pki.CSRRequest{DeviceID: d.dev.ID, CSR: d.csr})
		}
	}
	if len(reqs) == 0 {
		return nil, nil
	}
	existing := map[string]bool{}
	list, err := r.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range list {
		existing[d.ID] = true
	}
	var clash []string
	todo := reqs[:0]
	for _, q := range reqs {
		if existing[q.DeviceID] {
			clash = append(clash, q.DeviceID)
			continue
		}
		todo = append(todo, q)
	}
	if len(clash) > 0 && !skipExisting {
		return nil, &registry.ExistingError{IDs: clash}
	}
	issued, err := imp.signer.SignBatch(todo, imp.days, imp.now)
	if err != nil {
		return nil, err
	}
	signed := make(map[string]bool, len(issued))
	for _, is := range issued {
		imp.written = append(imp.written, is.Path)
		signed[is.DeviceID] = true
	}
	return signed, nil
}

// beforeCommit checks, inside the transaction, that the devices being
// added with a CSR are exactly those whose certificates were signed (a
// device added or removed meanwhile by someone else refuses the import),
// and writes the generated secrets of the devices being added to
// --secrets-out.
func (imp *importer) beforeCommit(added []registry.NewDevice, byID map[string]importDevice, signed map[string]bool) error {
	n := 0
	for _, a := range added {
		if byID[a.ID].csr == nil {
			continue
		}
		if !signed[a.ID] {
			return fmt.Errorf("device %s was removed from the registry during the import; run it again", a.ID)
		}
		n++
	}
	if n != len(signed) {
		return errors.New("devices were added to the registry during the import; run it again")
	}
	var gen []registry.NewDevice
	for _, a := range added {
		if byID[a.ID].generated {
			gen = append(gen, a)
		}
	}
	if len(gen) == 0 {
		return nil
	}
	return imp.writeSecrets(gen)
}

// writeSecrets creates --secrets-out (0600, never an existing file),
// writes id and secret of devs in the import's format and syncs it.
func (imp *importer) writeSecrets(devs []registry.NewDevice) (err error) {
	f, err := os.OpenFile(imp.secretsOut, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("--secrets-out: %w", err)
	}
	imp.written = append(imp.written, imp.secretsOut)
	imp.wroteSecrets = true
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("--secrets-out: %w", cerr)
		}
	}()
	w := bufio.NewWriter(f)
	if imp.format == formatCSV {
		cw := csv.NewWriter(w)
		_ = cw.Write([]string{"id", "secret"})
		for _, d := range devs {
			_ = cw.Write([]string{d.ID, d.Secret})
		}
		cw.Flush()
		if err := cw.Error(); err != nil {
			return fmt.Errorf("--secrets-out: %w", err)
		}
	} else {
		enc := json.NewEncoder(w)
		for _, d := range devs {
			id := d.ID
			if err := enc.Encode(jsonRow{ID: &id, Secret: d.Secret}); err != nil { //nolint:gosec // G117: the secrets file is where generated secrets go (0600, new)
				return fmt.Errorf("--secrets-out: %w", err)
			}
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("--secrets-out: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("--secrets-out: %w", err)
	}
	return nil
}

// undo removes the files written for a transaction that did not commit.
func (imp *importer) undo() {
	for _, p := range imp.written {
		_ = os.Remove(p)
	}
	imp.written = nil
}

// audit appends one entry per added device, in one append.
func (imp *importer) audit(ctx context.Context, s store, added []registry.NewDevice, byID map[string]importDevice) error {
	if len(added) == 0 {
		return nil
	}
	l, closeLog, err := storage.OpenAudit(ctx, s.cfg, s.path, time.Now)
	if err != nil {
		return fmt.Errorf("devices imported, but not recorded in the audit trail: %w", err)
	}
	defer closeLog() //nolint:errcheck // committed already
	actor := cliActor()
	entries := make([]*audit.Entry, len(added))
	for i, a := range added {
		action := "device.import"
		if byID[a.ID].csr != nil {
			action = "device.import.csr"
		}
		entries[i] = &audit.Entry{Actor: actor, Device: a.ID, Action: action, Count: 1}
	}
	if err := l.Append(ctx, entries...); err != nil {
		return fmt.Errorf("devices imported, but not recorded in the audit trail: %w", err)
	}
	return nil
}

func newDeviceExportCmd() *cobra.Command {
	var format, out string
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write the device list (never secrets) as CSV or JSON lines",
		Long: `export writes every device as id, enabled, created_at, revoked_at (RFC
3339, empty when never revoked) and freshness (timestamp or counter), as CSV with a header row (default) or as
JSON lines, to stdout or --out. It never writes secrets. The output is
accepted by "iotgw device import" (which generates new secrets for it,
ignores created_at and refuses revoked devices).`,
		Args: noArguments,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != formatCSV && format != formatJSONL {
				return usagef("--format must be csv or jsonl, not %q", format)
			}
			return withRegistry(cmd, false, func(ctx context.Context, r *registry.Registry) error {
				devices, err := r.List(ctx)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				var f *os.File
				if out != "" {
					if f, err = os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644); err != nil { //nolint:gosec // G302: the list holds no secrets
						return fmt.Errorf("--out: %w", err)
					}
					w = f
				}
				err = writeExport(w, format, devices)
				if f != nil {
					err = errors.Join(err, f.Close())
				}
				return err
			})
		},
	}
	cmd.Flags().StringVar(&format, "format", formatCSV, "csv or jsonl")
	cmd.Flags().StringVarP(&out, "out", "o", "", "write to this new file instead of stdout")
	return cmd
}

// exportRow is one JSON line of an export: it has no field for a secret.
type exportRow struct {
	ID        string `json:"id"`
	Enabled   bool   `json:"enabled"`
	CreatedAt string `json:"created_at,omitempty"`
	RevokedAt string `json:"revoked_at,omitempty"`
	Freshness string `json:"freshness"`
}

// writeExport writes devices in format.
func writeExport(w io.Writer, format string, devices []registry.Info) error {
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	bw := bufio.NewWriter(w)
	if format == formatCSV {
		cw := csv.NewWriter(bw)
		_ = cw.Write([]string{"id", "enabled", "created_at", "revoked_at", "freshness"})
		for _, d := range devices {
			_ = cw.Write([]string{d.ID, fmt.Sprint(d.Enabled), ts(d.CreatedAt), ts(d.RevokedAt), d.Freshness})
		}
		cw.Flush()
		if err := cw.Error(); err != nil {
			return err
		}
	} else {
		enc := json.NewEncoder(bw)
		for _, d := range devices {
			if err := enc.Encode(exportRow{ID: d.ID, Enabled: d.Enabled, CreatedAt: ts(d.CreatedAt), RevokedAt: ts(d.RevokedAt), Freshness: d.Freshness}); err != nil {
				return err
			}
		}
	}
	return bw.Flush()
}
