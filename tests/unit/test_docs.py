"""The README is a front page, and every link in it and in docs/ leads
somewhere: a file that exists, and a heading that exists in it."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(name for name in os.listdir(DOCS) if name.endswith(".md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def anchors(text):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to -."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def links(path):
    return [target for target in LINK.findall(FENCE.sub("", read(path)))
            if not re.match(r"[a-z]+:", target)]


def test_readme_is_a_front_page():
    assert len(read(os.path.join(ROOT, "README.md")).splitlines()) <= 300


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(target.split("#")[0])
              for target in links(os.path.join(ROOT, "README.md"))}
    assert {os.path.join("docs", page) for page in PAGES} <= linked


@pytest.mark.parametrize("page", ["README.md"] + [os.path.join("docs", p) for p in PAGES])
def test_links_resolve(page):
    path = os.path.join(ROOT, page)
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        goal = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
            if file_part else path
        assert os.path.exists(goal), "{}: {} does not exist".format(page, target)
        if anchor and goal.endswith(".md"):
            assert anchor in anchors(read(goal)), "{}: no heading for {}".format(page, target)


def test_performance_page_is_the_bench_output():
    from bench import report
    text = read(report.DOCS_PAGE)
    assert text.startswith(report.HEADER)
    assert "\nvote bench (full) " in text and "\ncode: commit " in text
