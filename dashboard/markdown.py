"""The model card as HTML for the model page: markdown-it-py (CommonMark + tables) with raw HTML off.

Raw HTML in the card is shown as text, never rendered; links are kept only when they point to an
http(s) address (relative links and images name files that the dashboard does not serve).
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.token import Token

_MD = MarkdownIt("commonmark", {"html": False}).enable("table")
_WEB = ("http://", "https://")


def _web_link(token: Token) -> bool:
    return str(token.attrGet("href") or "").startswith(_WEB)


def _inline(children: list[Token]) -> list[Token]:
    """Drop links that do not go to the web (their text stays) and images (their alt text stays)."""
    out: list[Token] = []
    dropped_opens: list[bool] = []
    for tok in children:
        if tok.type == "link_open":
            keep = _web_link(tok)
            dropped_opens.append(not keep)
            if keep:
                tok.attrSet("rel", "noopener")
                out.append(tok)
        elif tok.type == "link_close":
            if not dropped_opens.pop():
                out.append(tok)
        elif tok.type == "image":
            out.append(Token("text", "", 0, content=tok.content))
        else:
            out.append(tok)
    return out


def render_markdown(text: str) -> str:
    tokens = _MD.parse(text)
    for tok in tokens:
        if tok.type in ("heading_open", "heading_close"):
            tok.tag = f"h{min(int(tok.tag[1]) + 1, 6)}"  # the page already has its h1
        elif tok.type == "inline" and tok.children:
            tok.children = _inline(tok.children)
    return str(_MD.renderer.render(tokens, _MD.options, {}))
