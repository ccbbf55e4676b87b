// Benchmark peer: a Benthos v4 binary (the code base Redpanda Connect continues) with only the
// components the benchmark pipeline uses: kafka_franz in, sql_insert (lib/pq postgres driver)
// and opensearch out, plus the pure and io basics (broker, bloblang, stdout logging).
package main

import (
	"context"

	"github.com/benthosdev/benthos/v4/public/service"

	_ "github.com/benthosdev/benthos/v4/public/components/io"
	_ "github.com/benthosdev/benthos/v4/public/components/kafka"
	_ "github.com/benthosdev/benthos/v4/public/components/opensearch"
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
	_ "github.com/benthosdev/benthos/v4/public/components/sql/base"

	_ "github.com/lib/pq"
)

func main() {
	service.RunCLI(context.Background())
}
