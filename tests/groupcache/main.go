// geecache-groupcache: one node of a Go groupcache cluster, the peer system `geecache-perf
// http` measures geecache against (its `groupcache` baseline; see tests/perf/groupcache.rs).
//
// It answers what a geecache node answers to the perf tool's client, the same way:
//
//	GET /api/v1/groups/{group}/keys/{key}   the value, from groupcache's Group.Get
//	GET /readyz                             200 once serving
//	GET /stats                              the group's counters, as JSON
//	/_groupcache/...                        the peers' requests (groupcache's HTTPPool)
//
// The getter makes the value synth_getter makes (plugins/synth_getter/src/lib.rs): --value-bytes
// characters of a 64-letter alphabet from a splitmix64 stream seeded with the key's FNV-1a hash,
// so the same keys give the same bytes on either system.
//
// Peers ask each other over pooled keep-alive connections (a Transport keeping up to
// --peer-conns idle connections per peer; groupcache's default, http.DefaultTransport, keeps 2
// and opens a new connection for every other concurrent request).
//
// Built offline from Debian's golang-go and golang-github-golang-groupcache-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o geecache-groupcache main.go
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/golang/groupcache"
)

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// synth is synth_getter's value of key: n characters, eight per step of the generator.
func synth(key string, n int) []byte {
	state := uint64(0xcbf29ce484222325)
	for i := 0; i < len(key); i++ {
		state = (state ^ uint64(key[i])) * 0x00000100000001b3
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		state += 0x9e3779b97f4a7c15
		z := state
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		for i := 0; i < 8 && len(out) < n; i++ {
			out = append(out, alphabet[byte(z>>(8*i))&63])
		}
	}
	return out
}

func main() {
	port := flag.Int("port", 0, "port on 127.0.0.1")
	peers := flag.String("peers", "", "every node's base URL, this one's included, comma-separated")
	group := flag.String("group", "perf", "the group served")
	valueBytes := flag.Int("value-bytes", 100, "bytes of every value")
	cacheBytes := flag.Int64("cache-bytes", 72<<20, "the group's cache budget (main and hot caches)")
	peerConns := flag.Int("peer-conns", 256, "idle keep-alive connections kept to each peer")
	flag.Parse()
	if *port == 0 {
		log.Fatal("--port is required")
	}
	self := "http://127.0.0.1:" + strconv.Itoa(*port)

	pool := groupcache.NewHTTPPoolOpts(self, nil)
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: *peerConns,
		IdleConnTimeout:     90 * time.Second,
	}
	pool.Transport = func(context.Context) http.RoundTripper { return transport }
	all := []string{self}
	if *peers != "" {
		all = strings.Split(*peers, ",")
	}
	pool.Set(all...)

	n := *valueBytes
	g := groupcache.NewGroup(*group, *cacheBytes, groupcache.GetterFunc(
		func(_ context.Context, key string, dest groupcache.Sink) error {
			return dest.SetBytes(synth(key, n))
		}))

	prefix := "/api/v1/groups/" + *group + "/keys/"
	mux := http.NewServeMux()
	mux.Handle("/_groupcache/", pool)
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok"))
	})
	mux.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		s := &g.Stats
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]int64{
			"gets":            s.Gets.Get(),
			"cache_hits":      s.CacheHits.Get(),
			"peer_loads":      s.PeerLoads.Get(),
			"peer_errors":     s.PeerErrors.Get(),
			"loads":           s.Loads.Get(),
			"loads_deduped":   s.LoadsDeduped.Get(),
			"local_loads":     s.LocalLoads.Get(),
			"local_load_errs": s.LocalLoadErrs.Get(),
			"server_requests": s.ServerRequests.Get(),
		})
	})
	mux.HandleFunc(prefix, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "only GET", http.StatusMethodNotAllowed)
			return
		}
		var value []byte
		if err := g.Get(r.Context(), r.URL.Path[len(prefix):], groupcache.AllocatingByteSliceSink(&value)); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(value)
	})
	server := &http.Server{Addr: "127.0.0.1:" + strconv.Itoa(*port), Handler: mux}
	log.Printf("geecache-groupcache %s serving group %q (peers %v)", self, *group, all)
	log.Fatal(server.ListenAndServe())
}
