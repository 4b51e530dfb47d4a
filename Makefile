# Build artifacts once, on the controller; the `build` role runs `make artifacts` and ships
# the results to the nodes (which need no compiler).
#   build/bpf/*.o                  the datapath, one object per program file in bpf/
#   build/runtime/apiary-*.whl     the node runtime (Python package `apiary`)
PYTHON ?= $(shell test -x .venv/bin/python && echo .venv/bin/python || echo python3)
CLANG ?= clang
# -target bpf does not search the multiarch folder where <asm/types.h> lives on Debian/Ubuntu.
MULTIARCH := $(shell $(CLANG) -print-multiarch 2>/dev/null)
# BPF_EXTRA_CFLAGS and BPF_OUT are for tests that build variants elsewhere (e.g. -DAPIARY_METRICS_FORWARDED).
BPF_EXTRA_CFLAGS ?=
BPF_CFLAGS := -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_x86 -I bpf/include -I bpf/lib \
	$(if $(MULTIARCH),-idirafter /usr/include/$(MULTIARCH)) $(BPF_EXTRA_CFLAGS)
BPF_OUT ?= build/bpf

BPF_SOURCES := $(wildcard bpf/*.c)
BPF_HEADERS := $(wildcard bpf/include/*.h bpf/lib/*.h)
BPF_OBJECTS := $(patsubst bpf/%.c,$(BPF_OUT)/%.o,$(BPF_SOURCES))
RUNTIME_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' runtime/pyproject.toml)
RUNTIME_WHEEL := build/runtime/apiary-$(RUNTIME_VERSION)-py3-none-any.whl
RUNTIME_SOURCES := runtime/pyproject.toml $(shell find runtime/src -name '*.py')

.PHONY: artifacts bpf runtime clean upstream
artifacts: bpf runtime

bpf: $(BPF_OBJECTS) | $(BPF_OUT)
$(BPF_OUT):
	mkdir -p $@
$(BPF_OUT)/%.o: bpf/%.c $(BPF_HEADERS)
	@mkdir -p $(@D)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

runtime: $(RUNTIME_WHEEL)
$(RUNTIME_WHEEL): $(RUNTIME_SOURCES)
	@mkdir -p $(@D)
	rm -rf runtime/build build/runtime/apiary-*.whl
	$(PYTHON) -m pip wheel -q --no-deps --no-build-isolation -w build/runtime ./runtime
	rm -rf runtime/build runtime/src/apiary.egg-info
	@touch $@

# Kubernetes, etcd, containerd and runc from the Go module proxy into the lab's files_repo
# (scripts/build-upstream.py; APIARY_FILES_REPO, default /var/cache/apiary/files).
upstream:
	$(PYTHON) scripts/build-upstream.py

clean:
	rm -rf build

# The lab's pod images (nginx, busybox, netshoot, pause) from Debian's packages, one OCI layout (lab/images.py).
# Built again when the builder or the machine's installed packages (dpkg's status) change.
.PHONY: lab-images
lab-images: build/images/index.json
build/images/index.json: lab/images.py lab/pause.c /var/lib/dpkg/status
	$(PYTHON) -m lab.images --out build/images
	@touch $@
