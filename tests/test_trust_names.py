"""Issue 17: class and file names someone else chose are refused where they could break a
line, and stay text in the model card and the terminal."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.core.errors import ToolkitError


def test_pack_refuses_a_class_folder_name_that_crawl_would_refuse(tmp_path):
    from conftest import make_class_folders
    from helpers import assert_one_error_line, run_cli

    source = make_class_folders(tmp_path / "src", {"cat": range(0, 4), "dog\nfox": range(4, 8)})
    result = run_cli("pack", source, "--out", tmp_path / "a.npz", "--size", "32", "--allow-fewer")
    assert_one_error_line(result, "class folder 'dog\\nfox' holds a character that is not allowed")
    assert not (tmp_path / "a.npz").exists()


def test_an_archive_whose_class_names_hold_a_newline_is_refused(tmp_path):
    from helpers import write_archive
    from toolkit.data.npz import load_archive

    path = write_archive(tmp_path / "a.npz", n_per_class=5,
                         class_names=np.array(["circle", "square\ncircle", "triangle"]))
    with pytest.raises(ToolkitError, match=r"class name 'square\\ncircle' holds a control character"):
        load_archive(path)


@pytest.mark.slow
def test_markup_in_class_names_stays_text_in_the_model_card_and_the_terminal(tmp_path):
    import re

    from PIL import Image

    from helpers import run_cli, write_archive
    from toolkit.training.trainer import train

    names = np.array(["a|b", "<b>bold</b>", "`tick`"])
    data = write_archive(tmp_path / "a.npz", n_per_class=10, class_names=names)
    run = train(data, "cnn", out=tmp_path / "run", epochs=1, weights="none", batch_size=16,
                precision="float32", verbose=0, cache_dir=str(tmp_path / "cache"))
    card = (run.folder / "MODEL_CARD.md").read_text()
    outside_code = re.sub(r"`[^`]*`", "", card)  # inside a code span, markup is text
    assert "<b>" not in outside_code and "\\<b\\>bold\\</b\\>" in card
    rows = [line for line in card.splitlines() if line.startswith("| ") and "precision" not in line]
    assert len(rows) == 3 and all(len(re.findall(r"(?<!\\)\|", row)) == 6 for row in rows), rows
    odd = tmp_path / "evil\x1b]0;pwned\x07.png"
    Image.new("RGB", (40, 40), (9, 9, 9)).save(odd, "PNG")
    broken = tmp_path / "broken\x1b[2J.png"
    broken.write_bytes(b"not an image")
    result = run_cli("predict", run.folder, odd, broken)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\\x1b]0;pwned\\x07" in result.output
    assert "warning: " in result.output and "broken\\x1b[2J.png" in result.output
