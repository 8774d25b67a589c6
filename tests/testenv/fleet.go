package testenv

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fleetPeerTimeout is how long StartFleet waits for every node to see every
// other one (kubo's peering service dials at start and then with backoff).
const fleetPeerTimeout = 60 * time.Second

// StartFleet starts n online kubo daemons, each in its own repo with its
// own ports, peered with each other and with nothing else: swarm, API and
// gateway listen on 127.0.0.1 only, there are no bootstrap peers, no mDNS,
// no AutoConf, no NAT mapping, no relays, and an address filter refuses
// every dial outside 127.0.0.0/8. Blocks travel by bitswap between the
// peers; the DHT (every node a server) has the fleet's nodes and nobody
// else, so it holds the fleet's provider and IPNS records; IPNS updates are
// also pushed over pubsub (Ipns.UsePubsub). A node caches a resolved name
// for at most a second, so tests see updates promptly. It returns once
// every node is connected to all the others; the daemons stop when the
// test ends.
//
// These are the settings README's "Running a fleet" recommends, minus the
// loopback-only parts.
func StartFleet(t testing.TB, n int) []*Kubo {
	t.Helper()
	nodes := make([]*Kubo, n)
	for i := range nodes {
		k := &Kubo{Bin: KuboBin(t), Repo: filepath.Join(t.TempDir(), "ipfs"), online: true}
		t.Cleanup(func() { k.Stop(t) })
		k.Run(t, "init", "--profile=test")
		k.setConfig(t, fleetConfig())
		nodes[i] = k
	}
	// Start each node, then tell the live ones about it; its own peering
	// list (written before it starts) names the ones already up.
	for i, k := range nodes {
		k.setConfig(t, map[string]any{"Peering.Peers": peeringOf(nodes[:i])})
		k.start(t)
		for _, other := range nodes[:i] {
			other.Run(t, "swarm", "peering", "add", k.Swarm+"/p2p/"+k.PeerID)
		}
	}
	// Every node's config names all the others, for Restart.
	for i, k := range nodes {
		others := append(append([]*Kubo{}, nodes[:i]...), nodes[i+1:]...)
		k.setConfig(t, map[string]any{"Peering.Peers": peeringOf(others)})
	}
	for _, k := range nodes {
		k.WaitPeers(t, n-1)
	}
	return nodes
}

// WaitPeers waits until k is connected to at least n peers, all on
// loopback, and fails the test after a minute.
func (k *Kubo) WaitPeers(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(fleetPeerTimeout)
	for {
		peers := k.Peers(t)
		if len(peers) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: kubo %s has %d peers %q after %v, want %d%s", k.PeerID, len(peers), peers, fleetPeerTimeout, n, k.daemonOutput())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Peers returns the addresses of k's connected peers. It fails the test if
// one is not on loopback: a fleet node must never have left 127.0.0.0/8.
func (k *Kubo) Peers(t testing.TB) []string {
	t.Helper()
	peers := strings.Fields(k.Run(t, "swarm", "peers"))
	for _, p := range peers {
		if !strings.HasPrefix(p, "/ip4/127.0.0.1/") {
			t.Fatalf("testenv: kubo %s is connected to %s, outside loopback", k.PeerID, p)
		}
	}
	return peers
}

// fleetConfig is what makes a node a loopback-only fleet member.
func fleetConfig() map[string]any {
	c := loopbackConfig()
	for k, v := range map[string]any{
		"Addresses.Swarm":                       []string{"/ip4/127.0.0.1/tcp/0"},
		"Swarm.RelayClient.Enabled":             false,
		"Swarm.RelayService.Enabled":            false,
		"Swarm.Transports.Network.Websocket":    false,
		"Swarm.Transports.Network.QUIC":         false,
		"Swarm.Transports.Network.WebTransport": false,
		"Swarm.Transports.Network.WebRTCDirect": false,
		"Swarm.AddrFilters":                     outsideLoopback,
		"Routing.Type":                          "dhtserver",
		"Pubsub.Enabled":                        true,
		"Ipns.UsePubsub":                        true,
		"Ipns.MaxCacheTTL":                      "1s",
	} {
		c[k] = v
	}
	return c
}

// outsideLoopback is every IPv4 range but 127.0.0.0/8, and all of IPv6,
// as libp2p address filters.
var outsideLoopback = []string{
	"/ip4/0.0.0.0/ipcidr/2", "/ip4/64.0.0.0/ipcidr/3", "/ip4/96.0.0.0/ipcidr/4",
	"/ip4/112.0.0.0/ipcidr/5", "/ip4/120.0.0.0/ipcidr/6", "/ip4/124.0.0.0/ipcidr/7",
	"/ip4/126.0.0.0/ipcidr/8", "/ip4/128.0.0.0/ipcidr/1", "/ip6/::/ipcidr/0",
}

// peeringOf is kubo's Peering.Peers for nodes.
func peeringOf(nodes []*Kubo) []map[string]any {
	out := []map[string]any{}
	for _, k := range nodes {
		out = append(out, map[string]any{"ID": k.PeerID, "Addrs": []string{k.Swarm}})
	}
	return out
}

// Name returns the IPNS name of k's key (creating the key if needed).
func (k *Kubo) Name(t testing.TB, key string) string {
	t.Helper()
	var keys struct{ Keys []struct{ Name, Id string } }
	if err := json.Unmarshal([]byte(k.Run(t, "key", "list", "-l", "--enc=json")), &keys); err != nil {
		t.Fatalf("testenv: ipfs key list: %v", err)
	}
	for _, kk := range keys.Keys {
		if kk.Name == key {
			return kk.Id
		}
	}
	return strings.TrimSpace(k.Run(t, "key", "gen", "--ipns-base=base36", key))
}
