//go:build tools

// The command this module builds; the blank import keeps go mod tidy from dropping it.
package tools

import _ "github.com/opencontainers/runc"
