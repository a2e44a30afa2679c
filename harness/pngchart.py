# SPDX-License-Identifier: GPL-2.0
"""A grouped bar chart as a PNG file, with nothing but the standard library
(zlib for the compression): make bench's chart must not need a plotting
package.  Text is drawn in a 5x7 pixel font (ASCII letters, digits and
some punctuation)."""

import math
import struct
import zlib

# 5x7 glyphs, one byte per row from the top, bit 4 the leftmost pixel; the
# letters with a descender have two more rows, below the baseline.
FONT = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E),
    "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F),
    "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F),
    "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11),
    "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11),
    "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D),
    "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E),
    "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A),
    "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04),
    "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    "a": (0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F),
    "b": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E),
    "c": (0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E),
    "d": (0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F),
    "e": (0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E),
    "f": (0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08),
    "g": (0, 0, 0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E),
    "h": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11),
    "i": (0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E),
    "j": (0x02, 0, 0x06, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "k": (0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12),
    "l": (0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "m": (0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11),
    "n": (0, 0, 0x16, 0x19, 0x11, 0x11, 0x11),
    "o": (0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E),
    "p": (0, 0, 0x1E, 0x11, 0x11, 0x11, 0x1E, 0x10, 0x10),
    "q": (0, 0, 0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x01),
    "r": (0, 0, 0x16, 0x19, 0x10, 0x10, 0x10),
    "s": (0, 0, 0x0E, 0x10, 0x0E, 0x01, 0x1E),
    "t": (0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06),
    "u": (0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D),
    "v": (0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "w": (0, 0, 0x11, 0x11, 0x15, 0x15, 0x0A),
    "x": (0, 0, 0x11, 0x0A, 0x04, 0x0A, 0x11),
    "y": (0, 0, 0x11, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E),
    "z": (0, 0, 0x1F, 0x02, 0x04, 0x08, 0x1F),
    " ": (0, 0, 0, 0, 0, 0, 0),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C),
    ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08),
    ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0),
    "-": (0, 0, 0, 0x1F, 0, 0, 0),
    "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0),
    "_": (0, 0, 0, 0, 0, 0, 0x1F),
    ">": (0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08),
    "<": (0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
}

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (200, 200, 200)
DARK = (90, 90, 90)


class Canvas:
    """An RGB image in memory."""

    def __init__(self, width, height, background=WHITE):
        self.width, self.height = width, height
        self.rows = [bytearray(bytes(background) * width) for _ in range(height)]

    def rect(self, x0, y0, x1, y1, color):
        """Fill [x0, x1) x [y0, y1), clipped to the image."""
        x0, x1 = max(0, int(x0)), min(self.width, int(x1))
        y0, y1 = max(0, int(y0)), min(self.height, int(y1))
        if x0 >= x1:
            return
        span = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            self.rows[y][3 * x0:3 * x1] = span

    def hline(self, x0, x1, y, color, dash=0):
        if not dash:
            self.rect(x0, y, x1, y + 1, color)
            return
        for x in range(int(x0), int(x1), 2 * dash):
            self.rect(x, y, min(x + dash, x1), y + 1, color)

    def vline(self, x, y0, y1, color):
        self.rect(x, y0, x + 1, y1, color)

    @staticmethod
    def text_width(text, scale=1):
        return len(text) * 6 * scale - scale if text else 0

    def text(self, x, y, text, color=BLACK, scale=1, anchor="left"):
        """Draw @text with its top at @y; @anchor: left, center or right."""
        w = self.text_width(text, scale)
        if anchor == "center":
            x -= w // 2
        elif anchor == "right":
            x -= w
        for ch in text:
            glyph = FONT.get(ch) or FONT.get(ch.upper(), FONT["?"])
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if bits & (0x10 >> col):
                        self.rect(x + col * scale, y + row * scale,
                                  x + (col + 1) * scale,
                                  y + (row + 1) * scale, color)
            x += 6 * scale

    def png(self):
        raw = b"".join(b"\0" + bytes(r) for r in self.rows)

        def chunk(kind, data):
            return (struct.pack(">I", len(data)) + kind + data +
                    struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

        return (b"\x89PNG\r\n\x1a\n" +
                chunk(b"IHDR", struct.pack(">IIBBBBB", self.width,
                                           self.height, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def fmt(v):
    """@v with two significant digits, short enough to stand over a bar."""
    if v >= 100:
        return f"{v:.0f}"
    s = f"{v:.{max(0, 1 - math.floor(math.log10(v)))}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def steps(lo, hi):
    """The 1, 2, 5 x 10^n values from the one at or below @lo to the one at
    or above @hi."""
    n0, n1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    all_steps = [float(f"{m}e{n}") for n in range(n0, n1 + 1) for m in (1, 2, 5)]
    first = max(v for v in all_steps if v <= lo * 1.0001)
    last = min(v for v in all_steps if v >= hi / 1.0001)
    return [v for v in all_steps if first <= v <= last]


def bar_chart(title, panels, series, groups, unit, width=1200, height=640):
    """
    Grouped bars on a logarithmic scale.  @panels: [(panel title,
    {(group, series name): value or None})]; @series: [(name, (r, g, b))];
    @groups: the group labels, left to right.  Returns the PNG's bytes.
    """
    values = [v for _, data in panels for v in data.values() if v]
    ticks = steps(min(values), max(values)) if values else [0.1, 1]
    if len(ticks) < 2:
        ticks = steps(ticks[0] / 2, ticks[0] * 2)
    lo, hi = ticks[0], ticks[-1]
    c = Canvas(width, height)
    c.text(width // 2, 14, title, scale=2, anchor="center")
    top, bottom, left, right = 70, height - 110, 80, width - 20
    pw = (right - left) // len(panels)

    def y_of(v):
        f = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return bottom - f * (bottom - top)

    c.text(12, top - 22, unit, color=DARK, scale=1)
    for p, (ptitle, data) in enumerate(panels):
        x0 = left + p * pw + (12 if p else 0)
        x1 = left + (p + 1) * pw - 12
        c.text((x0 + x1) // 2, top - 26, ptitle, scale=2, anchor="center")
        # 1, 2 and 5 x 10^n, labelled on the first panel.
        for v in ticks:
            decade = fmt(v)[0] == "1"
            y = int(y_of(v))
            c.hline(x0, x1, y, GREY if decade else (232, 232, 232),
                    dash=0 if decade else 3)
            if p == 0:
                c.text(x0 - 8, y - 3, fmt(v), color=DARK, anchor="right")
        c.vline(x0, top, bottom + 1, BLACK)
        c.hline(x0, x1 + 1, bottom, BLACK)
        gw = (x1 - x0) / len(groups)
        bw = max(4, int(gw * 0.8 / len(series)))
        for g, group in enumerate(groups):
            gx = x0 + g * gw + (gw - bw * len(series)) / 2
            for s, (name, color) in enumerate(series):
                v = data.get((group, name))
                bx = int(gx + s * bw)
                if not v:
                    c.text(bx + bw // 2, bottom - 10, "-", color=DARK,
                           anchor="center")
                    continue
                y = int(y_of(max(v, lo)))
                c.rect(bx + 1, y, bx + bw - 1, bottom, color)
                # Every other label higher if they are wider than the bars.
                up = 9 if s % 2 and c.text_width(fmt(v)) > bw - 2 else 0
                c.text(bx + bw // 2, y - 10 - up, fmt(v), color=DARK,
                       anchor="center")
            c.text(int(x0 + (g + 0.5) * gw), bottom + 10, group, scale=2,
                   anchor="center")
    # The legend, centred under the panels.
    items = [(name, color, 18 + c.text_width(name, 2) + 28)
             for name, color in series]
    x = (width - sum(w for _, _, w in items)) // 2
    y = height - 60
    for name, color, w in items:
        c.rect(x, y, x + 14, y + 14, color)
        c.text(x + 20, y, name, scale=2)
        x += w
    return c.png()
