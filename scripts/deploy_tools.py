"""Make sure the tools of tests/deploy are here: ``kubectl`` (its built-in
kustomize builds the manifests of deploy/kubernetes) and ``promtool``
(checks and unit-tests the rules of deploy/prometheus).

promtool missing is installed with apt-get (Debian's ``prometheus``
package) when this runs as root, as CI does; kubectl missing, Debian's
``kubernetes-client``. Recommended packages are left out: the package's
``prometheus-node-exporter`` would take port 9100, the votes service's
METRICS_ADDRESS. Nothing the packages bring is started: a policy-rc.d that
refuses every start is in place while they install, and a Prometheus
server found running after the install is stopped. Otherwise this says how
to get them, and exits 1. Quick and silent when both are here.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
REFUSE_STARTS = "#!/bin/sh\n# no daemon starts while make test installs packages\nexit 101\n"
# tool -> (Debian package, what it is for)
TOOLS = {
    "promtool": ("prometheus", "the Prometheus rule checks and unit tests"),
    "kubectl": ("kubernetes-client", "building the Kubernetes manifests"),
}
# kustomize features the overlays use (labels, replicas, inline patches)
MIN_KUSTOMIZE = (4, 5)


def running(name):
    """Process ids whose command name is exactly ``name``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm == name:
                pids.append(int(entry.name))
    return pids


def apt_install(packages):
    """apt-get install ``packages`` without starting any of them (with the
    package lists updated if the first try fails); True if it succeeded."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    print("missing: {}".format(" ".join(install)), flush=True)
    own_policy = not POLICY_RC_D.exists()
    servers_before = set(running("prometheus"))
    if own_policy:
        POLICY_RC_D.write_text(REFUSE_STARTS)
        POLICY_RC_D.chmod(0o755)
    try:
        ok = subprocess.run(install, env=env).returncode == 0
        if not ok:
            subprocess.run(["apt-get", "update", "-q"], env=env)
            ok = subprocess.run(install, env=env).returncode == 0
    finally:
        if own_policy:
            POLICY_RC_D.unlink()
    # a server the install started anyway (no init system honoured the policy)
    for pid in set(running("prometheus")) - servers_before:
        print("stopping the Prometheus server the package started (pid {})".format(pid))
        os.kill(pid, 15)
    return ok


def kustomize_version():
    """(major, minor) of kubectl's built-in kustomize, or None."""
    result = subprocess.run(["kubectl", "version", "--client"],
                            capture_output=True, text=True)
    for line in result.stdout.splitlines():
        if line.startswith("Kustomize Version: v"):
            major, minor = line.split("v", 1)[1].split(".")[:2]
            return int(major), int(minor)
    return None


def main():
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        apt_install([TOOLS[tool][0] for tool in missing])
    problems = []
    for tool, (package, purpose) in TOOLS.items():
        if shutil.which(tool) is None:
            problems.append(
                "{tool} is not installed, and {purpose} need it.\n"
                "  Install it (Debian/Ubuntu: sudo apt-get install "
                "--no-install-recommends {package}).".format(
                    tool=tool, purpose=purpose, package=package))
    if shutil.which("kubectl") is not None:
        version = kustomize_version()
        if version is None or version < MIN_KUSTOMIZE:
            problems.append(
                "kubectl's kustomize is {} (need v{}.{} or newer): install a "
                "kubectl of 1.27 or newer (https://kubernetes.io/docs/tasks/"
                "tools/).".format("missing" if version is None else
                                  "v{}.{}".format(*version), *MIN_KUSTOMIZE))
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
