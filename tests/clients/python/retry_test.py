"""ctest test_python_client, part 3: the cipherdex package's retries (Client(retry=Retry()),
docs/WIRE.md "What to retry") against a live dev stack whose daemon this script kills (SIGKILL)
and restarts on the same port. Environment: what ./run up writes
(CIPHERDEX_ADDR, _CA, _CERT, _KEY, SOFTHSM2_CONF) plus CIPHERDEX_STACK_DIR (the stack's
directory) and CIPHERDEX_DAEMON (the cipherdexd binary). Exits non-zero on the first wrong
answer."""
import os
import signal
import subprocess
import time

import checks
from checks import check
from cipherdex import (Client, ConnectionLost, Item, RateLimited, Retry, StatusCode,
                       Unauthenticated, pb, retryable)

stack = os.environ["CIPHERDEX_STACK_DIR"]
addr = os.environ["CIPHERDEX_ADDR"]


def daemon_pid():
    with open(os.path.join(stack, "pids")) as f:
        for line in f:
            name, pid = line.split()
            if name == "cipherdexd":
                return int(pid)
    raise RuntimeError("no cipherdexd in the stack's pids file")


def restart_daemon():
    """kill -9 the stack's daemon and start it again on the same address."""
    pid = daemon_pid()
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)  # not our child when ./run up started it: then poll below
    except ChildProcessError:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # polling with a deadline for the process to be gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    conf = os.path.join(stack, "cipherdexd.conf")
    with open(conf) as f:
        text = f.read()
    # The same API port again (the first listen, in [server]), so that clients reconnect to the
    # address they know.
    lines = text.split("\n")
    first = next(i for i, ln in enumerate(lines) if ln.startswith("listen = "))
    lines[first] = f"listen = {addr}"
    text = "\n".join(lines)
    with open(conf, "w") as f:
        f.write(text)
    ports = os.path.join(stack, "ports")
    os.unlink(ports)
    log = open(os.path.join(stack, "cipherdexd.log"), "a")
    p = subprocess.Popen([os.environ["CIPHERDEX_DAEMON"], "--config", conf], stdout=log,
                         stderr=log, start_new_session=True)
    with open(os.path.join(stack, "pids")) as f:
        lines = [ln for ln in f.read().split("\n") if ln and not ln.startswith("cipherdexd ")]
    lines.append(f"cipherdexd {p.pid}")  # so that ./run down stops the new one
    with open(os.path.join(stack, "pids"), "w") as f:
        f.write("\n".join(lines) + "\n")
    deadline = time.monotonic() + 60
    while not (os.path.exists(ports) and os.path.getsize(ports) > 0):  # written once listening
        check(p.poll() is None and time.monotonic() < deadline, "the daemon restarts")
        time.sleep(0.02)


def reload_policy(extra):
    """Append `extra` to the stack's policy and SIGHUP the daemon; wait until it is in force."""
    path = os.path.join(stack, "policy.ini")
    with open(path) as f:
        base = f.read().split("; retry_test\n")[0]
    with open(path, "w") as f:
        f.write(base + "; retry_test\n" + extra)
    os.kill(daemon_pid(), signal.SIGHUP)


def rate_limited(c, name):
    """[limits]: RATE_LIMITED carries a retry hint, and call_retry waits it out."""
    c.describe_index(name)  # connected again
    reload_policy("[limits default]\nrequests_per_second = 2\nburst = 2\n")
    # The reload is in force once a burst of plain calls is refused (bounded wait).
    deadline = time.monotonic() + 10
    hint = 0
    while time.monotonic() < deadline and not hint:
        try:
            for _ in range(4):
                c.call("describe_index", pb.DescribeIndexRequest(name=name))  # no retries
        except RateLimited as e:
            check(e.code == StatusCode.RATE_LIMITED, f"over the limit: RATE_LIMITED ({e.code})")
            hint = e.retry_after_ms
    check(0 < hint <= 1001, f"RATE_LIMITED carries retry_after_ms ({hint})")
    t0 = time.monotonic()
    for _ in range(4):
        c.describe_index(name)
    check(time.monotonic() - t0 >= 0.4, "the retrying client waited for the bucket")
    reload_policy("")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # back to no limits
        try:
            for _ in range(6):
                c.call("describe_index", pb.DescribeIndexRequest(name=name))
            break
        except RateLimited:
            time.sleep(0.1)


def refused_certificate():
    """A certificate the server refuses (here its own: serverAuth, not clientAuth) is
    Unauthenticated with the reason, and the retrying client does not send it again."""
    pki = dict(line.strip().split("=", 1) for line in open(os.path.join(stack, "pki.txt"))
               if "=" in line)
    c = Client.from_env(cert=pki["server_cert"], key=pki["server_key"], retry=Retry(),
                        connect=False)
    try:
        c.health()
        check(False, "a refused certificate was served")
    except Unauthenticated as e:
        check(e.code == 16 and "refused this client's certificate" in e.message,
              f"refused certificate: UNAUTHENTICATED with the reason ({e.code}: {e.message})")
        check(c.attempts == 1, f"a refused certificate is not sent again ({c.attempts} tries)")
    c.close()


def main():
    check(retryable("upsert", 107) and retryable("query", 102) and retryable("get", 14),
          "idempotent requests retry on 14, 102, 107")
    check(retryable("create_index", 14) and retryable("train", 10), "any request retries on 10, 14")
    check(not retryable("create_index", 107) and not retryable("train", 102),
          "non-idempotent requests do not retry on an unknown outcome")
    check(not retryable("query", 3) and not retryable("upsert", 100), "errors that repeat")
    check(retryable("create_index", 122) and retryable("upsert", 122),
          "RATE_LIMITED: nothing was applied, any request retries")
    check(not retryable("query", 16), "UNAUTHENTICATED fails the same way again")

    c = Client.from_env(retry=Retry())
    name = f"retry-{os.getpid()}"
    c.create_index(name, 4, "euclidean", index_type="ivfflat")
    batch = [Item(id=f"r-{i}", vector=[float(i), 1.0, 2.0, 3.0]) for i in range(20)]
    c.upsert(name, batch[:10])
    check(c.attempts == 1, "a healthy call is sent once")

    restart_daemon()
    up = c.upsert(name, batch[10:])
    check(up.upserted == 10 and c.attempts == 2,
          f"an upsert on a dead connection is sent again on a new one ({c.attempts} tries)")
    g = c.get(name, [it.id for it in batch])
    check(g.found == [True] * 20, "every item of both batches is there")
    # The same batch again, as after a lost answer: the same 20 items.
    c.upsert(name, batch[10:])
    info = c.describe_index(name)
    check(info.count == 20, "a repeated upsert of the same ids and values changes nothing")

    restart_daemon()
    try:
        c.train(name)
        check(False, "train on a dead connection")
    except ConnectionLost:
        check(c.attempts == 1, "train is not sent again after an unknown outcome")
    rate_limited(c, name)
    refused_certificate()
    c.delete_index(name, info.id)
    c.close()
    print(f"python package retries: {checks.count} checks passed")


if __name__ == "__main__":
    main()
