package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"
)

// TestTLSRequiredDefaultsToTrue: a resource added with flags or from a file gets tls_required true
// unless it says false.
func TestTLSRequiredDefaultsToTrue(t *testing.T) {
	t.Run("flags", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want bool
		}{
			{[]string{"--hostname=mypg.postgres.database.azure.com"}, true},
			{[]string{"--tls-required"}, true},
			{[]string{"--tls-required=false"}, false},
		} {
			fs := pflag.NewFlagSet("add", pflag.ContinueOnError)
			f := newResourceFlags(fs, false)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if err := f.parse(); err != nil {
				t.Fatal(err)
			}
			if f.scratch.TLSRequired != tc.want {
				t.Errorf("%v: tls_required = %v, want %v", tc.args, f.scratch.TLSRequired, tc.want)
			}
		}
	})
	t.Run("file", func(t *testing.T) {
		for _, tc := range []struct {
			name, json string
			want       []bool
		}{
			{"object without the field", `{"name":"a","hostname":"a.postgres.database.azure.com","database":"d","username":"u"}`, []bool{true}},
			{"array", `[{"name":"a","hostname":"h","database":"d","username":"u"},
			            {"name":"b","hostname":"h","database":"d","username":"u","tls_required":false},
			            {"name":"c","hostname":"h","database":"d","username":"u","tls_required":null},
			            {"name":"d","hostname":"h","database":"d","username":"u","tls_required":true}]`, []bool{true, false, true, true}},
		} {
			file := filepath.Join(t.TempDir(), "r.json")
			if err := os.WriteFile(file, []byte(tc.json), 0o600); err != nil {
				t.Fatal(err)
			}
			batch, err := readResourceFile(file)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if len(batch) != len(tc.want) {
				t.Fatalf("%s: %d resources", tc.name, len(batch))
			}
			for i, r := range batch {
				if r.TLSRequired != tc.want[i] || r.Port != 5432 || r.Database != "d" {
					t.Errorf("%s: resource %s: tls_required %v (want %v), %+v", tc.name, r.Name, r.TLSRequired, tc.want[i], r)
				}
			}
		}
	})
}
