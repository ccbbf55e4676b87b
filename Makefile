# The two commands a newcomer needs: `make demo` (the main job end to end) and `make test`.
SHELL := /bin/bash
INFRA := tests/infra/infra.sh
# Integration tests share one Kafka, PostgreSQL and OpenSearch: run them one at a time.
TEST_FLAGS ?= --test-threads=1

.PHONY: test demo services-up services-down services-status build release

test: services-up
	eval "$$(bash $(INFRA) env)" && cargo test --locked -- $(TEST_FLAGS)

demo: services-up
	bash scripts/demo.sh

services-up:
	bash $(INFRA) up

services-down:
	bash $(INFRA) down

services-status:
	bash $(INFRA) status

build:
	cargo build --locked

release:
	cargo build --locked --release
