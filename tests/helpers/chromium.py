"""Debian's real Chromium, headless, in a network namespace: the DOM a page has after its scripts ran."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class DomElements(HTMLParser):
    """Every element of the dumped DOM as (tag, attrs, text directly inside it)."""

    def __init__(self):
        super().__init__()
        self.elements, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "children": []}
        if self.stack:
            self.stack[-1]["children"].append(element)
        self.elements.append(element)
        if tag not in ("meta", "br", "input", "link", "img", "path"):
            self.stack.append(element)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        if self.stack:
            self.stack[-1]["text"] += data

    def find(self, tag=None, cls=None, **attrs):
        return [e for e in self.elements if (tag is None or e["tag"] == tag)
                and (cls is None or cls in e["attrs"].get("class", "").split())
                and all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())]


def child_text(element, tag):
    return "".join(c["text"] for c in element["children"] if c["tag"] == tag)


def render(ns, url, tmp_path):
    """The DOM Chromium has after running the page's scripts (8 s of virtual time: several refreshes)."""
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
         "--user-data-dir=%s" % profile, "--no-first-run", "--disable-extensions", "--disable-background-networking",
         "--virtual-time-budget=8000", "--window-size=1200,900", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = DomElements()
    dom.feed(proc.stdout)
    return dom, proc.stdout
