package config

import (
	"strings"
	"testing"
	"time"
)

func TestBudgetDefaultsKeepBudgetsPerNode(t *testing.T) {
	c := Default()
	if c.Budget.Shared != "" || c.Budget.LocalShare != 0.25 || c.Budget.Sync != 100*time.Millisecond || c.Budget.NodeID != "" {
		t.Errorf("Budget = %+v, want no store, local_share 0.25, sync 100ms, no node_id", c.Budget)
	}
}

func TestBudgetSettingsAreRead(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want Budget
	}{
		{"a redis URL with a database", `shared = "redis://10.0.0.5:6379/2"`,
			Budget{Shared: "redis://10.0.0.5:6379/2", LocalShare: 0.25, Sync: 100 * time.Millisecond}},
		{"a TLS URL with a password", `shared = "rediss://:s3cret@redis.internal:6380/0"`,
			Budget{Shared: "rediss://:s3cret@redis.internal:6380/0", LocalShare: 0.25, Sync: 100 * time.Millisecond}},
		{"every key", "shared = \"redis://[::1]:6379\"\nlocal_share = 0.5\nsync = \"250ms\"\nnode_id = \"edge-7.fra\"",
			Budget{Shared: "redis://[::1]:6379", LocalShare: 0.5, Sync: 250 * time.Millisecond, NodeID: "edge-7.fra"}},
		{"a whole local_share as an integer", "local_share = 1", Budget{LocalShare: 1, Sync: 100 * time.Millisecond}},
		{"an empty shared keeps budgets per node", `shared = ""`, Budget{LocalShare: 0.25, Sync: 100 * time.Millisecond}},
		{"an empty node_id means the id kept in state_dir", `node_id = ""`, Budget{LocalShare: 0.25, Sync: 100 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte("[budget]\n"+tt.src+"\n"), "modules.toml", "/srv")
			if err != nil {
				t.Fatal(err)
			}
			if c.Budget != tt.want {
				t.Errorf("Budget = %+v, want %+v", c.Budget, tt.want)
			}
		})
	}
}

func TestBadBudgetValuesAreRejected(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"an http URL", `shared = "http://10.0.0.5:6379"`, `want a redis:// or rediss:// URL, got scheme "http"`},
		{"a URL without a port", `shared = "redis://10.0.0.5/0"`, "name the port"},
		{"a URL without a host", `shared = "redis:///0"`, "no host"},
		{"a database that is not a number", `shared = "redis://h:6379/cache"`, `invalid database "cache"`},
		{"a port out of range", `shared = "redis://h:99999/0"`, `invalid port "99999"`},
		{"query options", `shared = "redis://h:6379/0?dial_timeout=1s"`, "options in the query are not supported"},
		{"shared that is not a string", `shared = 6379`, "want a string, got an integer"},
		{"a local_share of 0", `local_share = 0.0`, "must be greater than 0 and at most 1, got 0"},
		{"a negative local_share", `local_share = -0.5`, "must be greater than 0 and at most 1, got -0.5"},
		{"a local_share above 1", `local_share = 1.5`, "must be greater than 0 and at most 1, got 1.5"},
		{"a local_share of NaN", `local_share = nan`, "must be greater than 0 and at most 1"},
		{"a local_share given as a string", `local_share = "25%"`, "want a number in (0, 1] like 0.25, got a string"},
		{"a sync below 10ms", `sync = "1ms"`, "must be between 10ms and 10s, got 1ms"},
		{"a sync above 10s", `sync = "1m"`, "must be between 10ms and 10s, got 1m0s"},
		{"a sync that is not a duration", `sync = 100`, "want a duration string"},
		{"a node_id with a space", `node_id = "edge 1"`, `invalid node id "edge 1"`},
		{"a node_id with a colon", `node_id = "a:b"`, `invalid node id "a:b"`},
		{"a node_id too long", `node_id = "` + strings.Repeat("n", 65) + `"`, "a node id has 1 to 64 characters, got 65"},
		{"an unknown key", `local_shar = 0.5`, `unknown key "local_shar" in [budget] (did you mean "local_share"?)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte("[budget]\n"+tt.src+"\n"), "modules.toml", "/srv")
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "modules.toml:2: ") {
				t.Errorf("error = %q, want it at line 2 and to contain %q", err, tt.want)
			}
		})
	}
}

func TestABadSharedURLNeverEchoesItsPassword(t *testing.T) {
	_, err := Parse([]byte("[budget]\nshared = \"redis://:hunter2@h:6379/x\"\n"), "modules.toml", "/srv")
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error = %v, want one without the password", err)
	}
	if got := RedactURL("redis://:hunter2@h:6379/0"); strings.Contains(got, "hunter2") {
		t.Errorf("RedactURL = %q, want the password hidden", got)
	}
}
