//go:build tools

// The commands this module builds; the blank imports keep go mod tidy from dropping them.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
