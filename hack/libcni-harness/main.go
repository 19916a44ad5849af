// libcni-harness drives a CNI conflist through libcni (github.com/containernetworking/cni),
// exactly as container runtimes do: ADD runs the chain in order feeding prevResult, CHECK
// and DEL use libcni's cached result. Built in GOPATH mode against Debian's
// golang-github-appc-cni-dev (no network):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o libcni-harness ./hack/libcni-harness
//
// Usage:
//
//	libcni-harness add|check|del -conflist F -netns PATH -id CID [-ifname eth0]
//	    [-path DIR:DIR] [-cache DIR] [-args K=V;K=V] [-caps JSON]
//
// ADD prints the final result as JSON. Errors go to stderr (the plugin's CNI error,
// code and message included) with exit status 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: libcni-harness add|check|del [flags]")
		os.Exit(2)
	}
	action := os.Args[1]
	fs := flag.NewFlagSet(action, flag.ExitOnError)
	conflist := fs.String("conflist", "", "conflist file")
	netns := fs.String("netns", "", "network namespace path")
	id := fs.String("id", "", "container id")
	ifname := fs.String("ifname", "eth0", "interface name")
	path := fs.String("path", "/opt/cni/bin", "plugin dirs, colon separated")
	cache := fs.String("cache", "/var/lib/cni", "libcni cache dir")
	args := fs.String("args", "", "CNI_ARGS (K=V;K=V)")
	caps := fs.String("caps", "", "capability args as a JSON object")
	_ = fs.Parse(os.Args[2:])

	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		fail(err)
	}
	rt := &libcni.RuntimeConf{
		ContainerID: *id,
		NetNS:       *netns,
		IfName:      *ifname,
		CacheDir:    *cache,
	}
	for _, kv := range strings.Split(*args, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			rt.Args = append(rt.Args, [2]string{k, v})
		}
	}
	if *caps != "" {
		if err := json.Unmarshal([]byte(*caps), &rt.CapabilityArgs); err != nil {
			fail(fmt.Errorf("-caps: %w", err))
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(*path), *cache, nil)
	ctx := context.Background()
	switch action {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := res.Print(); err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		fail(fmt.Errorf("unknown action %q", action))
	}
}

func fail(err error) {
	if e, ok := err.(*types.Error); ok {
		b, _ := json.Marshal(e)
		fmt.Fprintln(os.Stderr, string(b))
	} else {
		fmt.Fprintln(os.Stderr, err.Error())
	}
	os.Exit(1)
}
