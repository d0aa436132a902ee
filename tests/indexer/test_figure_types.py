"""The figure-type classifier's parts: the vocabulary, the caption evidence, the multi-panel detectors
(caption panel labels, image gutters on drawn images) and the combination of the two signals."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from indexer.caption_evidence import TYPES, caption_scores, caption_type
from indexer.figure_types import IMAGE_TYPES, CombineParams, best, combine, image_types
from indexer.panels import caption_panels, image_panels, panel_evidence
from indexer.vocabulary import FigureGroup, FigureType, PanelEvidence, figure_types

T = FigureType


def test_every_type_has_one_group_and_a_group_name_selects_its_types() -> None:
    assert {t.group for t in FigureType} == set(FigureGroup)
    assert sum(len(g.types) for g in FigureGroup) == len(FigureType)
    assert figure_types(["Radiology"]) == {T.CT, T.MRI, T.XRAY, T.ULTRASOUND, T.NUCLEAR, T.ANGIOGRAPHY}
    assert figure_types([" ct ", "graphics"]) == {T.CT, T.CHART, T.DIAGRAM, T.TABLE}
    assert figure_types([]) == frozenset()
    with pytest.raises(ValueError, match="unknown figure type 'xrays'"):
        figure_types(["xrays"])


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("Axial contrast-enhanced CT of the chest shows a right lower lobe mass.", T.CT),
        ("Sagittal T2-weighted image demonstrates a hyperintense lesion in the cord.", T.MRI),
        ("Chest X-ray on admission showing bilateral infiltrates.", T.XRAY),
        ("Transvaginal ultrasonography revealed a hypoechoic mass.", T.ULTRASOUND),
        ("18F-FDG PET/CT showing increased uptake in the mediastinal nodes.", T.NUCLEAR),
        ("Selective coronary angiogram of the left anterior descending artery.", T.ANGIOGRAPHY),
        ("Liver biopsy (H&E, original magnification ×200) showing steatosis.", T.HISTOLOGY),
        ("Immunofluorescence staining for GFAP (green) and DAPI (blue). Scale bar 50 μm.", T.FLUORESCENCE),
        ("Transmission electron micrograph of mitochondria in the myocyte.", T.ELECTRON),
        ("Clinical photograph of the lesion on the left forearm.", T.PHOTO),
        ("Colonoscopy showing a sessile polyp in the sigmoid colon.", T.ENDOSCOPY),
        ("Western blot of cell lysates probed for p53; β-actin served as loading control.", T.GEL),
        ("Kaplan-Meier survival curves of the two groups (log-rank p = 0.03).", T.CHART),
        ("Flow chart of participant selection for this study", T.DIAGRAM),
        ("Endoscopic retrograde cholangiopancreatography showed a stricture of the common bile duct.", T.XRAY),
        ("Data are presented as mean ± SEM; *p < 0.05 versus control.", T.CHART),
        ("Luigi Galvani (1737 - 1798)", T.OTHER),
    ],
)
def test_the_caption_names_the_type(caption: str, expected: FigureType) -> None:
    assert caption_type(caption_scores(caption)) is expected


def test_label_and_mentions_count_and_mentions_count_less() -> None:
    table = caption_scores("Baseline characteristics of the participants.", label="Table 2")
    assert caption_type(table) is T.TABLE
    only_mentioned = caption_scores("Representative images.", mentions=["CT of the chest was performed (Figure 2)."])
    in_caption = caption_scores("Representative CT images.")
    assert caption_type(only_mentioned) is T.CT
    assert 0 < only_mentioned[TYPES.index(T.CT)] < in_caption[TYPES.index(T.CT)]
    assert not caption_scores("").any()


@pytest.mark.parametrize(
    ("caption", "panels"),
    [
        ("(A) Axial CT. (B) Coronal reconstruction.", True),
        ("Histology of the tumour (a–c) and its metastasis.", True),
        ("A: before treatment. B: after treatment.", True),
        ("a) control; b) treated", True),
        ("Temporal edit patterns of two articles (left/right panel).", True),
        ("PMF spectra before (top) and after (bottom) incubation.", True),
        ("Axial CT of the chest with contrast.", False),
        ("Vitamin A levels (mean ± SD) in the two groups.", False),
        ("Category (a), consensus.", False),
    ],
)
def test_caption_panel_labels(caption: str, panels: bool) -> None:
    assert caption_panels(caption) is panels


def _canvas(size: tuple[int, int] = (600, 400), colour: int = 255) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", size, (colour, colour, colour))
    return image, ImageDraw.Draw(image)


def _noise(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], seed: int) -> None:
    """Textured content (what a photo or a plot has): random grey dots in ``box``."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = box
    for x, y, g in zip(rng.integers(x0, x1, 3000), rng.integers(y0, y1, 3000), rng.integers(0, 200, 3000),
                       strict=True):
        draw.point((int(x), int(y)), fill=(int(g), int(g), int(g)))


def test_a_white_gutter_between_two_panels_is_found_across_and_down() -> None:
    side_by_side, draw = _canvas()
    _noise(draw, (10, 10, 290, 390), 1)
    _noise(draw, (310, 10, 590, 390), 2)
    assert image_panels(side_by_side)
    grid, draw = _canvas((600, 600), colour=0)  # 2 x 2 on black, as radiology montages are
    for i, (x, y) in enumerate(((5, 5), (305, 5), (5, 305), (305, 305))):
        draw.rectangle((x, y, x + 290, y + 290), fill=(90, 90, 90))
        _noise(draw, (x, y, x + 290, y + 290), 10 + i)
    assert image_panels(grid)


def test_one_panel_with_margins_a_title_or_an_axis_label_is_not_multi_panel() -> None:
    single, draw = _canvas()
    _noise(draw, (40, 30, 560, 370), 3)  # content inside wide uniform margins
    assert not image_panels(single)
    titled, draw = _canvas()
    draw.rectangle((200, 8, 400, 22), fill=(0, 0, 0))  # a title band above the plot, a gap, then the plot
    _noise(draw, (40, 50, 560, 390), 4)
    assert not image_panels(titled)
    assert not image_panels(Image.new("RGB", (300, 200), (255, 255, 255)))  # blank
    assert not image_panels(Image.new("RGB", (20, 400), (0, 0, 0)))  # too small to tell


def test_panel_evidence_says_which_signal_found_panels() -> None:
    assert panel_evidence(True, True) is PanelEvidence.BOTH
    assert panel_evidence(True, None) is PanelEvidence.CAPTION
    assert panel_evidence(False, True) is PanelEvidence.IMAGE
    assert panel_evidence(False, False) is PanelEvidence.NONE


def _cosines(favourite: FigureType, margin: float) -> np.ndarray:
    """Zero-shot cosines of one image: 0.25 for every class, ``margin`` more for ``favourite``."""
    cos = np.full((1, len(IMAGE_TYPES)), 0.25, dtype=np.float32)
    cos[0, IMAGE_TYPES.index(favourite)] += margin
    return cos


def test_the_combination_uses_the_caption_when_it_speaks_and_the_image_when_it_does_not() -> None:
    params = CombineParams(scale=50.0, image_weight=1.0, caption_weight=1.0, other_bias=2.0)
    ct_caption = caption_scores("Axial CT of the abdomen.")[None, :]
    silent = caption_scores("Case 12, day 3.")[None, :]
    mri_image = _cosines(T.MRI, 0.02)  # the image leans weakly towards MRI
    # the caption names CT: it wins over a weak image opinion
    assert best(combine(ct_caption, mri_image, params))[0][0] is T.CT
    # a silent caption: the image decides, with its confidence
    kind, confidence = best(combine(silent, _cosines(T.MRI, 0.1), params))[0]
    assert kind is T.MRI and 0.5 < confidence <= 1.0
    # no image vector (NaN row) and a silent caption: other
    no_image = np.full((1, len(IMAGE_TYPES)), np.nan, dtype=np.float32)
    assert best(combine(silent, no_image, params))[0][0] is T.OTHER
    assert best(combine(ct_caption, None, params))[0][0] is T.CT
    # image-only predictions ignore the caption
    assert image_types(mri_image) == [T.MRI]
    probabilities = combine(np.vstack([ct_caption, silent]), np.vstack([mri_image, no_image]), params)
    assert probabilities.shape == (2, len(TYPES)) and np.allclose(probabilities.sum(axis=1), 1.0)
