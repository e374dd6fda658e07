"""Make sure the browser of the browser tests is here: Debian's chromium,
driven by Playwright for Python (pinned in requirements-dev.txt).

Chromium missing is installed with apt-get when this runs as root (as CI
does); otherwise this says how to get it, and exits 1. Playwright's own
browser download (``playwright install``) is never used: it needs the
internet. Then Chromium is launched once, so that a Playwright too old for
it shows here and not as a failing test. axe-core (the accessibility check,
pinned in package.json and package-lock.json) is installed into
node_modules with `npm ci` when it is missing.
"""
import os
import shutil
import subprocess
import sys

CHROMIUM = os.environ.get("CHROMIUM", "chromium")
PACKAGE = "chromium"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AXE = os.path.join(ROOT, "node_modules", "axe-core", "axe.min.js")


def chromium_path():
    return shutil.which(CHROMIUM)


def apt_install():
    """apt-get install chromium (with the package lists updated if the
    first try fails); True if it ran and succeeded."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", PACKAGE]
    print("Chromium is missing: {}".format(" ".join(install)), flush=True)
    if subprocess.run(install, env=env).returncode == 0:
        return True
    subprocess.run(["apt-get", "update", "-q"], env=env)
    return subprocess.run(install, env=env).returncode == 0


def launches(path):
    """None if Playwright can start and drive this Chromium, else why not."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        return "Playwright is not installed ({}); run: make venv".format(exc)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=path, args=["--no-sandbox"], timeout=30000)
            page = browser.new_page()
            page.set_content("<p>ok</p>")
            text = page.inner_text("p")
            version = browser.version
            browser.close()
    except Exception as exc:
        return "{}: {}".format(type(exc).__name__, str(exc).splitlines()[0])
    if text != "ok":
        return "Chromium did not render a page"
    print("Chromium {} answers Playwright at {}".format(version, path))
    return None


def npm_ci():
    """axe-core from the npm registry, as package-lock.json pins it; None
    when it is there, else why not."""
    if os.path.exists(AXE):
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is missing (Debian/Ubuntu: sudo apt-get install npm)"
    command = [npm, "ci", "--no-audit", "--no-fund"]
    print("axe-core is missing: {}".format(" ".join(command)), flush=True)
    if subprocess.run(command, cwd=ROOT).returncode != 0 or not os.path.exists(AXE):
        return "npm ci did not install axe-core"
    return None


def main():
    problem = npm_ci()
    if problem:
        print("The accessibility test needs axe-core: {}".format(problem),
              file=sys.stderr)
        return 1
    path = chromium_path()
    if path is None and apt_install():
        path = chromium_path()
    if path is None:
        print(
            "Chromium is not installed, and the browser tests need it.\n"
            "  Install it (Debian/Ubuntu: sudo apt-get install {package}),\n"
            "  or set CHROMIUM to a Chromium binary.".format(package=PACKAGE),
            file=sys.stderr)
        return 1
    problem = launches(path)
    if problem:
        print(
            "Playwright cannot drive {path}: {problem}\n"
            "  requirements-dev.txt pins the Playwright that works with "
            "Debian's chromium; a Chromium far ahead of it can break.\n"
            "  Never run `playwright install`: it downloads browsers from "
            "the internet.".format(path=path, problem=problem),
            file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
