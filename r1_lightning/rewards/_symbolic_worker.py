"""The symbolic step of the grader, in child processes: a fork server and the workers it forks.

`python -m r1_lightning.rewards._symbolic_worker FD` starts the fork server: it imports sympy and
math-verify, warms their caches, then reads messages on the Unix socket FD (its parent's control
socket). Each message carries one socket; the server forks a worker that serves that socket. So a
new worker costs a fork (milliseconds), not an import and warm-up (one to three seconds), and all
workers hold identical caches and the same PYTHONHASHSEED (set by the parent), hence give the same
verdicts. The server exits when the control socket closes, a worker when its socket closes, so
neither outlives the parent.

Worker protocol (one line each): the worker first writes its pid; then the parent writes
`[request_id, given, ground_truth]` (JSON) and the worker answers `[request_id, equal]`.

Why processes: sympy and the antlr LaTeX parser can run for minutes (or allocate gigabytes) on
hostile input, inside C code that no signal interrupts, and math-verify's own SIGALRM timeouts
only work in the main thread. The parent kills a worker whose reply is late.
"""

import gc
import json
import logging
import os
import resource
import signal
import socket
import sys

# A hostile expression like (10^6)! or 9^(9^9) must fail fast with MemoryError instead of
# swapping the machine; the parser and sympy need a few hundred MiB.
MEMORY_LIMIT_BYTES = 4 * 1024**3

WARM_UP = [
    ("0.5", "\\frac{1}{2}"),
    ("\\sqrt{12}", "2\\sqrt{3}"),
    ("[0, 3)", "(0, 3]"),
    ("(-\\infty, 3) \\cup (3, \\infty)", "(3, \\infty) \\cup (-\\infty, 3)"),
    ("(1, \\pi/2)", "\\left( 1, \\frac{\\pi}{2} \\right)"),
    ("\\begin{pmatrix} 1 \\\\ 0.5 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ \\frac{1}{2} \\end{pmatrix}"),
    ("(x+1)(x+2)", "x^2 + 3x + 2"),
    ("y = 2x + 3", "2x+3"),
    ("1 + i", "i + 1"),
    ("3.464102", "2\\sqrt{3}"),
]


def _limit_memory() -> None:
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > MEMORY_LIMIT_BYTES:
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, hard))
    except (ValueError, OSError):  # not permitted here: the parent's time bound still holds
        pass


def _equal(given: str, ground_truth: str) -> bool:
    from r1_lightning.rewards.symbolic import symbolic_equal

    try:
        return symbolic_equal(given, ground_truth)
    except Exception:  # noqa: BLE001 - MemoryError, RecursionError, sympy internals: "not equal"
        return False


def _serve(connection: socket.socket) -> None:
    """A worker's life: answer requests on `connection` until it closes."""
    connection.sendall(f"{os.getpid()}\n".encode())
    with connection.makefile("rb") as requests:
        for line in requests:
            request_id, given, ground_truth = json.loads(line)
            connection.sendall((json.dumps([request_id, _equal(given, ground_truth)]) + "\n").encode())


def main(control_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; EOF ends us
    sys.stdout = sys.stderr  # a stray print() in a library must not write where it should not
    _limit_memory()
    logging.disable(logging.WARNING)  # math-verify warns once that its own timeouts are off
    # Load the parser and warm sympy's caches once, here: every worker starts warm.
    for given, ground_truth in WARM_UP:
        _equal(given, ground_truth)
    gc.freeze()  # keep the warm objects in pages the workers share rather than copy
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped automatically
    control = socket.socket(fileno=control_fd)
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(control, 16, 4)
        except OSError:
            return
        if not message:  # the parent closed the control socket: it is gone or done
            return
        for fd in fds:
            if os.fork() == 0:
                control.close()
                try:
                    _serve(socket.socket(fileno=fd))
                finally:
                    os._exit(0)
            os.close(fd)


if __name__ == "__main__":
    main(int(sys.argv[1]))
