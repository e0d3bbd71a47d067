"""Every link of README.md and docs/*.md points to a file that exists, and every #anchor to a
heading of its page, with GitHub's heading slugs.

Links and headings inside fenced code blocks and inline code are not links or headings; web
links (http, https, mailto) are not checked.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]

FENCE = re.compile(r'^(```|~~~).*?^\1[^\n]*$', re.M | re.S)
INLINE_CODE = re.compile(r'(`+).+?\1', re.S)
LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$', re.M)
WEB = ('http://', 'https://', 'mailto:')


def prose(text: str) -> str:
    """The text without fenced code blocks (kept as blank lines)."""
    return FENCE.sub(lambda m: '\n' * m.group(0).count('\n'), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped, each
    space a hyphen (so 'a + b' gives 'a--b')."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link's text, not its target
    text = text.replace('`', '').strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path: Path) -> set:
    """The anchors of a markdown page; repeated headings get GitHub's -1, -2, ... suffixes."""
    seen, result = {}, set()
    for match in HEADING.finditer(prose(path.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f'{base}-{count}')
    return result


def links(path: Path) -> list:
    """The link targets of a markdown page, outside code."""
    return LINK.findall(INLINE_CODE.sub('', prose(path.read_text())))


def broken_links(path: Path) -> list:
    """'target: why' for each link of ``path`` whose file or anchor does not exist."""
    broken = []
    for target in links(path):
        if target.startswith(WEB):
            continue
        file_part, _, anchor = target.partition('#')
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f'{target}: no file {destination}')
        elif anchor and destination.suffix == '.md' and anchor not in anchors(destination):
            broken.append(f'{target}: no heading with anchor #{anchor} in {destination.name}')
    return broken


@pytest.mark.parametrize('page', PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_link_points_to_an_existing_file_and_heading(page):
    assert broken_links(page) == []


def test_readme_links_every_docs_page():
    linked = {(ROOT / t.partition('#')[0]).resolve() for t in links(ROOT / 'README.md')
              if not t.startswith(WEB)}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


@pytest.mark.parametrize('heading, expected', [
    ('Two commands', 'two-commands'),
    ('The demo (no COCO needed)', 'the-demo-no-coco-needed'),
    ('Backbones: `SASAResNet`, the attention stem, AA-ResNet and the timm models',
     'backbones-sasaresnet-the-attention-stem-aa-resnet-and-the-timm-models'),
    ('RetinaNet R-50 at 640 x 640 (backbone + FPN + head; no anchors, no NMS)',
     'retinanet-r-50-at-640-x-640-backbone--fpn--head-no-anchors-no-nms'),
    ("What `tools/demo.sh` does", 'what-toolsdemosh-does'),
    ('snake_case stays', 'snake_case-stays'),
])
def test_slugs_follow_githubs_rules(heading, expected):
    assert slug(heading) == expected


def test_control_a_missing_file_a_missing_anchor_and_code_are_told_apart(tmp_path):
    page = tmp_path / 'page.md'
    (tmp_path / 'other.md').write_text('# Other page\n\n## Same\n\n## Same\n')
    page.write_text(
        '# Page\n\n[ok](other.md#same-1) [self](#page) [web](https://example.org/x.md)\n'
        '[gone](missing.md) [bad anchor](other.md#nowhere) ![img](missing.png)\n\n'
        '`[in code](nowhere.md)`\n\n```markdown\n[in a block](nowhere.md)\n# Not a heading\n```\n'
        '[not a heading either](#not-a-heading)\n')
    broken = broken_links(page)
    assert [b.split(':')[0] for b in broken] == [
        'missing.md', 'other.md#nowhere', 'missing.png', '#not-a-heading']
