#!/usr/bin/env python3
"""The shutdown phase of the benchmark: SIGTERM at random moments, many rounds per variant.

Each round starts log-processor (at defaults) on a backlog it cannot finish in the round, sends
SIGTERM at a random moment of the variant's window and measures signal -> exit. Variants:
  steady        one replica reading a 6-partition backlog; signal 3-6 s after start.
  joining       a resident replica reads the backlog; a second replica of the same group is
                started and signalled 0-2 s after its start, while it joins the group.
  rebalance     a replica reading the backlog is signalled 0-1.5 s after a second replica of
                its group started, while the partitions move (the second is stopped after).
  partitions48  one replica on a 48-partition backlog; signal 3-6 s after start.
  slow_store    PostgreSQL's table locked 1 s after start with LP_PG_STATEMENT_TIMEOUT_MS=5000,
                so writes wait for the statement timeout; signal 0.5-3 s after the lock.
Per variant: p50/p90/p99/max of signal -> exit, the exit codes, and the phase that dominated
(from the daemon's own `shutdown: ...` timeline lines: the longest gap between two of them is
charged to the phase that ended it).

Run by bench/bench.py (phase `shutdown`), or alone for a before/after comparison:
  python3 bench/shutdown_bench.py --lp-binary BIN --rounds 20 --out FILE.json
"""
import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import threading
import time

VARIANTS = ("steady", "joining", "rebalance", "partitions48", "slow_store")
# slow_store rounds each wait a statement timeout: a fifth as many.
ROUND_SHARE = {"slow_store": 0.2}
PHASE_RE = re.compile(r'shutdown: .*phase="([^"]+)".*elapsed_ms=(\d+)')


class Env:
    """Where the services are and which binary runs."""

    def __init__(self, lp, brokers, dsn, es_url, work, log):
        self.lp, self.brokers, self.dsn, self.es, self.work, self.log = lp, brokers, dsn, es_url, work, log

    def psql(self, sql, check=True):
        r = subprocess.run(["psql", self.dsn, "-v", "ON_ERROR_STOP=1", "-tAqc", sql],
                           capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"psql: {r.stderr.strip()} ({sql[:80]})")
        return r.stdout.strip()

    def lp_env(self, ident, topic, extra=None):
        env = dict(os.environ)
        env.update({"LP_KAFKA_BROKERS": self.brokers, "LP_DATABASE_URL": self.dsn,
                    "LP_ELASTICSEARCH_URL": self.es, "LP_TOPICS": topic, "LP_GROUP_ID": ident,
                    "LP_PG_SCHEMA": ident, "LP_ES_INDEX": ident.replace("_", "-") + "-%Y.%m.%d",
                    # Two replicas at once: each its own port.
                    "LP_HTTP_ADDR": "127.0.0.1:0", "LP_LOG": "info"})
        env.update(extra or {})
        return env

    def cleanup(self, ident):
        self.psql(f"DROP SCHEMA IF EXISTS {ident} CASCADE", check=False)
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-XDELETE", f"{self.es}/{ident.replace('_', '-')}-*"],
                       check=False)
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-XDELETE",
                        f"{self.es}/_index_template/log-processor-{ident.replace('_', '-')}"], check=False)

    def loadgen(self, topic, n, partitions):
        subprocess.run([self.lp, "loadgen", "--kafka-brokers", self.brokers, "--topic", topic, "--count", str(n),
                        "--partitions", str(partitions)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Replica:
    """One log-processor process whose stderr lines are kept with their arrival times."""

    def __init__(self, env, ident, topic, extra=None):
        self.lines = []
        self.p = subprocess.Popen([env.lp, "run"], env=env.lp_env(ident, topic, extra),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.t0 = time.monotonic()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.p.stderr:
            self.lines.append((time.monotonic(), raw.decode("utf-8", "replace")))

    def wait_line(self, needle, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(needle in l for _, l in self.lines):
                return
            if self.p.poll() is not None:
                raise RuntimeError(f"log-processor exited {self.p.returncode} before {needle!r}")
            time.sleep(0.02)
        raise RuntimeError(f"no {needle!r} within {timeout} s")

    def stop(self, timeout=40):
        """SIGTERM; returns (exit code, ms from signal to exit)."""
        t = time.monotonic()
        self.p.send_signal(signal.SIGTERM)
        try:
            code = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            code = self.p.wait()
        ms = round(1000 * (time.monotonic() - t))
        self.reader.join(2)
        return code, ms

    def dominant_phase(self):
        """The timeline phase that ended the longest gap since the signal."""
        marks = [(m.group(1), int(m.group(2))) for _, l in self.lines if (m := PHASE_RE.search(l))]
        best, prev = None, 0
        for name, ms in marks:
            name = re.sub(r"worker \d+ drained", "worker drained", name)
            if best is None or ms - prev > best[1]:
                best = (name, ms - prev)
            prev = ms
        return best[0] if best else "none"


def one_round(env, variant, ident, topic, rng):
    """Runs one round; returns the measured replica's (exit code, ms, dominant phase)."""
    extra = {"LP_PG_STATEMENT_TIMEOUT_MS": "5000"} if variant == "slow_store" else None
    if variant in ("steady", "partitions48"):
        r = Replica(env, ident, topic)
        r.wait_line("partitions assigned")
        time.sleep(max(0.0, r.t0 + rng.uniform(3, 6) - time.monotonic()))
    elif variant == "joining":
        r = Replica(env, ident, topic)
        r.wait_line("stores ready")
        time.sleep(rng.uniform(0, 2))
    elif variant == "rebalance":
        r = Replica(env, ident, topic)
        r.wait_line("partitions assigned")
        time.sleep(1)
        second = Replica(env, ident, topic)
        second.wait_line("stores ready")
        time.sleep(rng.uniform(0, 1.5))
    else:  # slow_store
        r = Replica(env, ident, topic, extra)
        r.wait_line("partitions assigned")
        time.sleep(1)
        locker = subprocess.Popen(["psql", env.dsn, "-v", "ON_ERROR_STOP=1", "-qc",
                                   f"BEGIN; LOCK TABLE {ident}.log_records IN ACCESS EXCLUSIVE MODE; "
                                   "SELECT pg_sleep(60); COMMIT;"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 3))
    code, ms = r.stop()
    phase = r.dominant_phase()
    if variant == "rebalance":
        second.stop()
    if variant == "slow_store":
        locker.kill()
        locker.wait()
        # The server side of the killed psql would sleep on with the lock (and the schema's
        # cleanup would wait for it): end it.
        env.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 f"WHERE query LIKE 'BEGIN; LOCK TABLE {ident}.%' AND pid <> pg_backend_pid()", check=False)
    return code, ms, phase


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def summarize(rounds):
    ms = [r["ms"] for r in rounds]
    codes, phases = {}, {}
    for r in rounds:
        codes[str(r["code"])] = codes.get(str(r["code"]), 0) + 1
        phases[r["phase"]] = phases.get(r["phase"], 0) + 1
    return {"rounds": len(rounds), "p50_ms": pct(ms, 0.5), "p90_ms": pct(ms, 0.9), "p99_ms": pct(ms, 0.99),
            "max_ms": max(ms), "mean_ms": round(statistics.mean(ms)), "exit_codes": codes,
            "dominant_phases": dict(sorted(phases.items(), key=lambda kv: -kv[1]))}


def run(env, rounds, stamp, seed=None, variants=VARIANTS):
    """All variants; returns {"seed", "rounds", "variants": {name: summary + per-round rows}}."""
    seed = seed if seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    backlog = 300_000
    topics = {6: f"bench_sd6_{stamp}", 48: f"bench_sd48_{stamp}"}
    for parts, topic in topics.items():
        env.log(f"shutdown: loadgen {backlog} records to {topic} ({parts} partitions)")
        env.loadgen(topic, backlog, parts)
    out = {"seed": seed, "rounds": rounds, "backlog_records": backlog, "variants": {}}
    for variant in variants:
        topic = topics[48 if variant == "partitions48" else 6]
        n = max(3, round(rounds * ROUND_SHARE.get(variant, 1)))
        resident = None
        shared = f"bsdjoin_{stamp}"
        if variant == "joining":
            # The resident member the joining replicas meet: it reads the backlog all along.
            resident = Replica(env, shared, topic)
            resident.wait_line("partitions assigned")
        rows = []
        try:
            for i in range(n):
                ident = shared if variant == "joining" else f"bsd{variant.replace('_', '')}{i}_{stamp}"
                try:
                    code, ms, phase = one_round(env, variant, ident, topic, rng)
                finally:
                    if variant != "joining":
                        env.cleanup(ident)
                rows.append({"code": code, "ms": ms, "phase": phase})
                env.log(f"shutdown {variant} {i + 1}/{n}: exit {code} after {ms} ms ({phase})")
        finally:
            if resident:
                resident.stop()
                env.cleanup(shared)
        out["variants"][variant] = dict(summarize(rows), runs=rows)
    return out


def markdown(sd):
    lines = [f"SIGTERM at random moments ({sd['rounds']} rounds per variant, a fifth for slow_store; seed "
             f"{sd['seed']}); signal to exit in ms:", "",
             "| variant | rounds | p50 | p90 | p99 | max | exit codes | dominant phase |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in sd["variants"].items():
        codes = ", ".join(f"{k}: {c}" for k, c in sorted(v["exit_codes"].items()))
        phases = ", ".join(f"{k} ({c})" for k, c in v["dominant_phases"].items())
        lines.append(f"| {name} | {v['rounds']} | {v['p50_ms']:,} | {v['p90_ms']:,} | {v['p99_ms']:,} | "
                     f"{v['max_ms']:,} | {codes} | {phases} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lp-binary", required=True)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    env = Env(os.path.abspath(a.lp_binary), os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092"),
              os.environ.get("DATABASE_URL", "postgres://logproc:logproc@127.0.0.1:5432/logproc"),
              os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200").rstrip("/"),
              os.path.dirname(os.path.abspath(a.out)),
              lambda *m: print(time.strftime("[%H:%M:%S]"), *m, flush=True))
    res = run(env, a.rounds, time.strftime("%m%d%H%M%S"), a.seed, a.variants.split(","))
    res["lp_binary"] = a.lp_binary
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(markdown(res))


if __name__ == "__main__":
    main()
