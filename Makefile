# The two commands a newcomer needs: `make demo` (the main job end to end) and `make test`.
SHELL := /bin/bash
INFRA := tests/infra/infra.sh
# Integration tests share one Kafka, PostgreSQL and OpenSearch: run them one at a time.
TEST_FLAGS ?= --test-threads=1

.PHONY: unit test go-tools chaos compat demo services-up services-down services-status build release bench audit-scale system-deps image-check

# The build's Debian packages (cmake, libcurl headers, ...): one list, scripts/system-deps.sh.
# Installs only what is missing, or fails naming the packages to install by hand.
system-deps:
	@bash scripts/system-deps.sh

# promtool, kustomize, helm and the manifest and PromQL checkers the deploy and observability tests
# run, built from the Go module proxy into .cache/go-tools (minutes the first time, then cached).
go-tools:
	@bash scripts/go-tools.sh >/dev/null

# `failpoints` lets tests/chaos.rs stop the daemon inside chosen windows; release builds lack it.
# The chaos tests run here at reduced sizes (CHAOS_FULL unset).
test: system-deps go-tools services-up
	eval "$$(bash $(INFRA) env)" && cargo test --locked --features failpoints -- $(TEST_FLAGS)

# Every test that needs no service, no Go tool and no Java: the library's and binary's unit and
# property tests and the source-shape check (tests/architecture.rs). The fast loop.
unit: system-deps
	cargo test --locked --features failpoints --lib --bins --test architecture

# The full chaos suites (tests/chaos.rs, the store refusals of tests/refusals.rs, the partition
# leader failover of tests/failover.rs on a three-broker cluster, parked records, and a topic,
# a log or a database changing under the daemon: recreated_topic, source_gaps,
# restored_database; giant records under a memory cgroup). Prints the
# seed first; CHAOS_SEED=N replays a run.
CHAOS_FULL ?= 1
chaos: system-deps services-up
	@seed="$${CHAOS_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"; \
	echo "chaos: seed=$$seed full=$(CHAOS_FULL) (replay with CHAOS_SEED=$$seed make chaos)"; \
	eval "$$(bash $(INFRA) env)" && CHAOS_SEED="$$seed" CHAOS_FULL="$(CHAOS_FULL)" \
	  cargo test --locked --features failpoints --no-fail-fast --test chaos --test refusals --test failover --test parking --test recreated_topic --test source_gaps --test restored_database --test giant_records -- --nocapture $(TEST_FLAGS)

# The pipeline test, the hostile-input and the reduced SIGKILL scenario against real
# OpenSearch 2 and 3 and Elasticsearch 8 and 9 in turn (scripts/compat.sh); one line per store.
compat: system-deps services-up
	bash scripts/compat.sh

demo: system-deps services-up
	bash scripts/demo.sh

services-up:
	bash $(INFRA) up

# tests/secured.rs starts the secured services itself (tests/infra/secure.sh up); stop them too.
services-down:
	bash $(INFRA) down
	bash tests/infra/secure.sh down

services-status:
	bash $(INFRA) status

build: system-deps
	cargo build --locked

release: system-deps
	cargo build --locked --release

# The Dockerfile's runtime stage built under podman from the release binary and run against the
# services: non-root, PID 1, read-only root, /healthz and /readyz, `podman stop` drains to exit 0
# inside the deadline (scripts/image-check.sh; installs podman and mmdebstrap if missing).
image-check: release services-up
	eval "$$(bash $(INFRA) env)" && bash scripts/image-check.sh

# `log-processor audit` over 1,000,000 consumed records: time, peak RSS, a run SIGKILLed half
# way, the repair (scripts/measure-audit.sh; writes bench/results/audit.json).
audit-scale: system-deps services-up
	bash scripts/measure-audit.sh

# Throughput, CPU, memory, batch size and crash cost against a peer and raw ceilings (bench/).
bench: system-deps services-up
	bash bench/run.sh
