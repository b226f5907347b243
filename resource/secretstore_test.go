package resource

import (
	"strings"
	"testing"
)

// TestNormalizeVaultURI: the node sends a Key Vault access token to a store's vault, so a vault URI
// is https://NAME plus one of Key Vault's own suffixes, and nothing more: no port, path, query,
// fragment or user info, no look-alike host.
func TestNormalizeVaultURI(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" = refused
	}{
		{"https://Ferry-Demo-KV.vault.azure.net/", "https://ferry-demo-kv.vault.azure.net/"},
		{"https://kv1.vault.azure.net", "https://kv1.vault.azure.net/"},
		{"https://kv1.vault.azure.cn/", "https://kv1.vault.azure.cn/"},
		{"https://kv1.vault.usgovcloudapi.net/", "https://kv1.vault.usgovcloudapi.net/"},
		{"http://kv1.vault.azure.net/", ""},
		{"https://kv1.vault.azure.net:443/", ""},
		{"https://kv1.vault.azure.net:8443/", ""},
		{"https://kv1.vault.azure.net/secrets", ""},
		{"https://kv1.vault.azure.net/?x=1", ""},
		{"https://kv1.vault.azure.net/#x", ""},
		{"https://user@kv1.vault.azure.net/", ""},
		{"https://user:pw@kv1.vault.azure.net/", ""},
		{"https://kv1.vault.azure.net.example.com/", ""},
		{"https://kv1.evil.vault.azure.net/", ""},
		{"https://kv1vault.azure.net/", ""},
		{"https://.vault.azure.net/", ""},
		{"https://kv--1.vault.azure.net/", ""},
		{"https://1kv.vault.azure.net/", ""},
		{"https://" + strings.Repeat("k", 25) + ".vault.azure.net/", ""},
		{"kv1.vault.azure.net", ""},
		{"", ""},
	} {
		got, err := NormalizeVaultURI(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("NormalizeVaultURI(%q) = %q, want refused", tc.in, got)
		case tc.want != "" && (err != nil || got != tc.want):
			t.Errorf("NormalizeVaultURI(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
