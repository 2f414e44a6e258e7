"""The README's pictures of a conversation: a screenshot of the web page (docs/chat-page.png) and a
terminal transcript (printed), both against the tests' scripted stand-in model (tests/scripted.py's
`coder`, which writes fixed code for fixed turns), since no real CodeGen checkpoint can be
downloaded here and the demo model does not write code for turns. The mechanics shown (streaming,
the sandboxed run, candidates) are those a real checkpoint gets.

    python scripts/readme_conversation.py [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import io
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "server")]

TURNS = ["Assign the list [5, 3, 8, 1] to a variable named numbers.", "Sort numbers in place.",
         "Keep the numbers greater than 2 in a list named big.", "Print the sum of big."]
CODE = {TURNS[0]: "numbers = [5, 3, 8, 1]", TURNS[1]: "numbers.sort()",
        TURNS[2]: "big = [n for n in numbers if n > 2]", TURNS[3]: "print(sum(big))"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "chat-page.png"))
    args = ap.parse_args()

    import codegen
    from codegen.chat.session import ChatSession
    from codegen.chat.terminal import Terminal
    from codegen.engine import SamplingParams
    from codegen.paradigm import TRUNCATE
    from scripted import coder_lm
    from serving import Server

    tok = codegen.CodeGenTokenizerFast.from_pretrained(os.path.join(ROOT, "..", "shared", "data", "codegen-tokenizer"))
    model = coder_lm(tok, CODE)

    out = io.StringIO()
    term = Terminal(ChatSession(model, tok, SamplingParams(max_new_tokens=64, temperature=0.0,
                                                           truncate_before_pattern=TRUNCATE)), out)
    for line in TURNS + ["/history"]:
        out.write(">>> " + line + "\n")
        term.handle(line)
    term.close()
    print(out.getvalue())

    from playwright.sync_api import sync_playwright

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with Server(model, tok, allow_run=True) as site, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        page.goto(site.url + "/")
        page.wait_for_selector("body[data-ready='1']")
        for i, words in enumerate(TURNS):
            page.fill("#say", words)
            page.press("#say", "Enter")
            page.wait_for_function(f"document.querySelectorAll('.turn pre.code').length == {i + 1} && "
                                   "!document.getElementById('send').disabled && "
                                   "!document.getElementById('output').innerText.includes('(running)')")
        page.wait_for_function("document.getElementById('output').innerText.startsWith('16')")
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
