#!/usr/bin/env python3
"""Counts executions of atomic (lock-prefixed, or xchg with memory) instructions per request.

Usage:
    valgrind --tool=callgrind --dump-instr=yes --instr-atstart=no --callgrind-out-file=OUT BINARY ...
    # warm up, then: callgrind_control -i on PID; run wrk; callgrind_control -i off PID; stop it
    python3 benches/scripts/lock_count.py OUT BINARY REQUESTS [OBJECT]

BINARY is the file whose instructions are counted (the proxy, or a shared library such as
/usr/lib/x86_64-linux-gnu/libc.so.6, with OBJECT a substring of its path as callgrind names it;
by default the binary's own path). REQUESTS is the number wrk reported for the instrumented run.
Prints the total per request and the functions that execute them.
"""
import collections
import re
import subprocess
import sys


def atomic_addresses(binary):
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True, check=True
    ).stdout
    found = set()
    for line in listing.splitlines():
        m = re.match(r"\s+([0-9a-f]+):\s+(lock |xchg\s)", line)
        if m:
            found.add(int(m.group(1), 16))
    return found


def main():
    out, binary, requests = sys.argv[1], sys.argv[2], float(sys.argv[3])
    obj = sys.argv[4] if len(sys.argv) > 4 else binary
    atomics = atomic_addresses(binary)
    # callgrind's compressed names: ob/cob share one table, fn/cfn one, fl/fi/fe/cfi/cfl one.
    tables = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn"}
    names = {}
    current = {"ob": None, "fn": None}
    position = [0, 0]
    call_cost_next = False
    per_function = collections.Counter()

    def name(kind, rest):
        m = re.match(r"\((\d+)\)(?: (.*))?", rest)
        if not m:
            return rest
        if m.group(2):
            names[(kind, m.group(1))] = m.group(2)
        return names.get((kind, m.group(1)), "?")

    def step(token, previous):
        if token == "*":
            return previous
        if token[0] in "+-":
            return previous + int(token)
        return int(token, 16) if token.startswith("0x") else int(token)

    for line in open(out):
        line = line.rstrip("\n")
        if not line:
            continue
        if line[0].isdigit() or line[0] in "+-*":
            fields = line.split()
            position = [step(fields[0], position[0]), step(fields[1], position[1])]
            if call_cost_next:  # the inclusive cost of a call, not this instruction's own
                call_cost_next = False
                continue
            if current["ob"] and obj in current["ob"] and position[0] in atomics:
                per_function[current["fn"]] += int(fields[-1])
            continue
        key, _, rest = line.partition("=")
        if key in ("ob", "fn"):
            current[key] = name(tables[key], rest)
        elif key in tables:
            name(tables[key], rest)
        elif key == "calls":
            call_cost_next = True

    total = sum(per_function.values())
    print(f"atomic instructions executed: {total / requests:.1f} per request")
    for function, count in per_function.most_common(25):
        print(f"{count / requests:7.2f}  {function[:140]}")


if __name__ == "__main__":
    main()
