"""Screenshot a run's report.html in headless Chromium (the picture in docs/reports.md).

    python scripts/screenshot_report.py runs/flowers-unknown docs/run-report.png
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import make_driver


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    driver = make_driver(width=1100, height=1000)
    try:
        driver.get((run / "report.html").resolve().as_uri())
        # open the largest confusion (off the diagonal) and show the matrix with its images
        driver.execute_script("""
            var cells = Array.from(document.querySelectorAll('[data-cell]:not([disabled])'))
                .filter(function (b) { var ij = b.dataset.cell.split('-'); return ij[0] !== ij[1]; });
            cells.sort(function (a, b) { return b.textContent - a.textContent; });
            (cells[0] || document.querySelector('[data-cell]:not([disabled])')).click();
            document.querySelector('.cm').previousElementSibling.previousElementSibling
                .scrollIntoView();""")
        out.parent.mkdir(parents=True, exist_ok=True)
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    # 256 colours: a third of the size in docs/, and the page's text and thumbnails stay sharp
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256).save(out, optimize=True)


if __name__ == "__main__":
    main()
