"""Run untrusted programs (model completions) contained, one verdict each, on a fresh Linux machine
with nothing installed: isolation comes from the kernel directly (namespaces, no bubblewrap needed).

- `harness`: limits, verdicts, the pool of zygotes and `run_program` / `run_many`; fails closed.
- `zygote`: a pre-started interpreter that forks and supervises one jailed process per program;
  the verdict comes over a channel only the check's return can fill.
- `jail`: the program's world (mount namespace, scratch space, unprivileged user, limits).
- `kernel`: the Linux calls behind it; `protocol`: harness <-> zygote frames.

What each mode protects, and what it does not, is in the README ("The sandbox")."""

from .harness import (UNSAFE_FLAG, Limits, Sandbox, SandboxUnavailable, Verdict, describe_isolation, isolation,
                      run_many, run_program)

__all__ = ["Limits", "Sandbox", "SandboxUnavailable", "UNSAFE_FLAG", "Verdict", "describe_isolation", "isolation",
           "run_many", "run_program"]
