"""What a figure's text says about its type: modality words in its caption, label and mentions.

:func:`caption_scores` turns a figure's caption (with its title), its label and the body sentences
that cite it into one evidence score per :class:`indexer.vocabulary.FigureType` (in the order of
:data:`TYPES`): the sum of the weights of the distinct rules that match (:data:`RULES`), a rule
matched in the caption or label counting fully and one matched only in the mentions counting half.
Weights: 3 for a word that names the modality ("computed tomography", "western blot", "H&E"), 2 for a
strong hint ("T2-weighted", "Kaplan-Meier", "schematic"), 1 for a weak one ("magnification", "mean ±
SD", "lane"). :mod:`indexer.figure_types` combines these scores with the image's zero-shot scores.

Acronyms are matched case-sensitively (``CT``, ``MRI``, ``PET``, ``TEM``), everything else in any
case; the patterns are constants (no user input reaches a regular expression).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from indexer.vocabulary import FigureType

TYPES: tuple[FigureType, ...] = tuple(FigureType)
"""The order of every per-type score vector (caption evidence, zero-shot scores, combined)."""

MENTION_WEIGHT = 0.5  # a rule found only in the body sentences citing the figure counts this much

T = FigureType
_I = re.IGNORECASE


@dataclass(frozen=True)
class Rule:
    """One piece of evidence: ``pattern`` found in the text adds ``weight`` to each of ``types``."""

    pattern: re.Pattern[str]
    types: tuple[FigureType, ...]
    weight: float


def _rule(pattern: str, types: FigureType | tuple[FigureType, ...], weight: float, flags: int = _I) -> Rule:
    return Rule(re.compile(pattern, flags), types if isinstance(types, tuple) else (types,), weight)


RULES: tuple[Rule, ...] = (
    # --- radiology -------------------------------------------------------------------------------
    _rule(r"\bcomput[eao]ri?[sz]?ed tomograph|\btomodensitom", T.CT, 3),
    _rule(r"\b(?:HR|CE|MD|NC|CB)?CT\b(?!\s*values?)", T.CT, 3, 0),
    _rule(r"\bHounsfield|\bnon-?contrast|\bcontrast[- ]enhanced|\bhypodens|\bhyperdens|\battenuation\b", T.CT, 1),
    _rule(r"\bmagnetic resonance|\bMR imag", T.MRI, 3),
    _rule(r"\b(?:f|c)?MRI?\b|\bMRA\b|\bDWI\b|\bADC\b|\bFLAIR\b|\bSTIR\b|\bDTI\b|\bSWI\b", T.MRI, 3, 0),
    _rule(r"\bT[12][- ]?(?:weighted|W\b|WI\b)|\bdiffusion[- ]weighted|\bgadolinium|\bgd-enhanced|"
          r"\bfat[- ]sat|\bhyperintens|\bhypointens|\bsignal intensity|\bFIESTA\b|\bproton density", T.MRI, 2),
    _rule(r"\bradiograph|\bx[- ]?ray|\broentgenogra|\bplain film|\bchest film|\bmammogra|\bfluoroscop|"
          r"\borthopantomogra|\bpanoramic (?:radiograph|view|image)|\bbarium\b|\bcephalogra", T.XRAY, 3),
    _rule(r"\bCXR\b|\bKUB\b|\bOPG\b", T.XRAY, 3, 0),
    _rule(r"\bradiogram|\bradiolucen|\bradio-?opa(?:que|city)|\bcontrast (?:study|enema|swallow|meal)|"
          r"\bpanoramic|\bbitewing|\bperiapical|\bmicrocalcification|\bskiagram", T.XRAY, 2),
    _rule(r"\b(?:antero-?posterior|postero-?anterior|AP|PA|lateral|oblique) (?:view|projection)", T.XRAY, 1),
    _rule(r"\bultraso(?:und|nogra)|\bsonogra|\bechocardiogra|\bdoppler\b|\b(?:hyper|hypo|an|iso)echoic|"
          r"\bechogenic|\btransvaginal|\btrans(?:thoracic|esophageal|oesophageal) echo|\bB-mode", T.ULTRASOUND, 3),
    _rule(r"\bUS\b(?! ?\$)|\bTTE\b|\bTEE\b|\bEUS\b|\bTVUS\b", T.ULTRASOUND, 2, 0),
    _rule(r"\bpositron emission|\bscintigra|\bscintiscan|\bradionuclide|\bnuclear medicine|\bbone scan|"
          r"\btechnetium|\b99m ?Tc|\bTc-? ?99m|\bradiotracer|\bgamma camera|\boctreoscan|\bsestamibi", T.NUCLEAR, 3),
    _rule(r"\bPET\b|\bSPECT\b|\bFDG\b|\bMIBG\b|\bSUV(?:max)?\b", T.NUCLEAR, 3, 0),
    _rule(r"\b(?:PET|SPECT) ?[/-] ?CT\b|\bfused (?:PET|SPECT)", T.NUCLEAR, 2, 0),
    _rule(r"\buptake\b", T.NUCLEAR, 1),
    _rule(r"\bangiogra|\barteriogra|\bvenogra|\bdigital subtraction|\bportogra|\bventriculogra|\baortogra",
          T.ANGIOGRAPHY, 3),
    _rule(r"\bfluorescein angiogra|\bindocyanine green angiogra|\bICG angiogra", T.ANGIOGRAPHY, 4),
    _rule(r"\bDSA\b|\bCTA\b|\bMRA\b", T.ANGIOGRAPHY, 2, 0),
    # contrast studies under fluoroscopy are radiographs (an ERCP image is an X-ray, not an endoscopic view)
    _rule(r"\bretrograde cholangio|\bcholangiogra|\bcystourethrogra|\burethrogra|\bhysterosalpingogra|"
          r"\bpyelogra|\bmyelogra|\bsialogra|\bfistulogra|\besophagogra|\bswallow study|\bcystogra", T.XRAY, 4),
    _rule(r"\bERCP\b|\bVCUG\b|\bHSG\b|\bIVU\b|\bIVP\b", T.XRAY, 4, 0),
    _rule(r"\bemboli[sz]ation|\bcatheteri[sz]ation|\bstenosis of the|\bcoronary arter", T.ANGIOGRAPHY, 1),
    # --- microscopy ------------------------------------------------------------------------------
    _rule(r"\bH\s?&\s?E\b|\bH and E\b|\bhaematoxylin|\bhematoxylin|\beosin\b|\bhistopatholog|\bhistolog|"
          r"\bPAS stain|\bperiodic acid|\btrichrome|\bgiemsa|\bgram stain|\bziehl|\bvan gieson|\bcongo red|"
          r"\bpapanicolaou|\bcytolog|\bsilver stain|\bmethenamine|\btoluidine|\bnissl|\bmovat", T.HISTOLOGY, 3),
    _rule(r"\bphotomicrograph|\bmicrograph|\blight microscop|\bbiopsy specimen|\bsmear\b|\btissue sections?\b|"
          r"\bstained (?:with|for|section)|\bstaining\b", T.HISTOLOGY, 2),
    _rule(r"\bmagnification|\bmagnified|\bscale bars?\b|\bobjective\b|[(,;]\s?[×x]\s?\d{2,4}\s?\)|"
          r"\(\s?\d{2,4}\s?[×x]\s?\)|\b\d+(?:\.\d+)?\s?[µμ]m\b", (T.HISTOLOGY, T.FLUORESCENCE), 1),
    _rule(r"\bimmunohistochem|\bimmunocytochem|\bimmunofluoresc|\bimmunostain|\bimmunolabel|\bimmunoreactiv|"
          r"\bfluorescen|\bconfocal|\bDAPI\b|\bhoechst|\balexa ?fluor|\bFITC\b|\bGFP\b|\bmcherry|\btdtomato|"
          r"\bin situ hybridi[sz]ation|\bFISH\b|\btwo-photon|\bcalcium imaging|\bphalloidin", T.FLUORESCENCE, 3),
    _rule(r"\bIHC\b|\bIF\b|\bEGFP\b|\bYFP\b|\bRFP\b|\bCFP\b", T.FLUORESCENCE, 2, 0),
    _rule(r"\bpositive cells|\bmerged?\b|\bco-?locali[sz]|\bantibod(?:y|ies) against|\bstained with anti",
          T.FLUORESCENCE, 1),
    _rule(r"\belectron micro|\belectron-micro|\bultrastructur|\bcryo-?em\b|\bcryo-electron|\bnegative(?:ly)? stain|"
          r"\bscanning electron|\btransmission electron|\bfreeze-fracture", T.ELECTRON, 3),
    _rule(r"\bTEM\b|\bSEM (?:image|micrograph|analysis|photograph|of)\b|\bEM\b", T.ELECTRON, 2, 0),
    # --- other images ----------------------------------------------------------------------------
    _rule(r"\bphotograph|\bclinical (?:photo|picture|image|appearance|view)|\bgross (?:appearance|specimen|"
          r"patholog|view|examination)|\bmacroscopic|\bintra-?operative|\boperative (?:view|field|finding)|"
          r"\bsurgical (?:field|specimen|view)|\bfundus|\bslit[- ]lamp|\bdermoscop|\bintraoral|\bextraoral|"
          r"\bphoto\b", T.PHOTO, 3),
    _rule(r"\bskin\b|\blesions? (?:on|of) the\b|\berythema|\bswelling\b|\bulcer\b|\bincision|"
          r"\bresected specimen|\bexcised|\bcut surface|\bappearance of the", T.PHOTO, 1),
    _rule(r"\bendoscop|\bcolonoscop|\bgastroscop|\bbronchoscop|\bcystoscop|\blaparoscop|\barthroscop|"
          r"\bhysteroscop|\blaryngoscop|\bsigmoidoscop|\bduodenoscop|\besophagogastroduodenoscop|\bthoracoscop|"
          r"\bcapsule endoscop|\bnasendoscop|\bcolposcop|\benteroscop|\bnephroscop|\bureteroscop|"
          r"\bcholedochoscop|\brhinoscop|\botoscop|\bsinuscop|\bscopic view", T.ENDOSCOPY, 3),
    _rule(r"\bEGD\b|\bNBI\b", T.ENDOSCOPY, 2, 0),
    _rule(r"\bwestern blot|\bimmunoblot|\bnorthern blot|\bsouthern blot|\bwestern analys|\bblots?\b|"
          r"\bgel electrophores|\bagarose gel|\bpolyacrylamide gel|\bzymogra|\belectrophoretic mobility|"
          r"\bgels?\b", T.GEL, 3),
    _rule(r"\bSDS-?PAGE\b|\bPAGE\b|\bEMSA\b", T.GEL, 3, 0),
    _rule(r"\bk ?Da\b|\blanes?\b|\bprotein bands?\b|\bloading control|\bladder\b|\bPCR products?|\bamplicons?\b",
          T.GEL, 1),
    # --- graphics --------------------------------------------------------------------------------
    _rule(r"\bkaplan[- –]meier|\bsurvival curves?|\bhistograms?\b|\bbar (?:graph|chart|plot)s?|\bbox ?plots?|"
          r"\bscatter ?plots?|\bforest plots?|\bfunnel plots?|\bROC curves?|\bline (?:graph|chart)s?|"
          r"\bheat ?maps?|\bpie charts?|\bvolcano plots?|\bgraphs?\b|\bplots?\b|\bcurves?\b|(?<!flow )\bchart\b",
          T.CHART, 3),
    _rule(r"\bmean\s?±|±\s?(?:S\.?E\.?M?|S\.?D\.?)\b|\berror bars?|\bp\s?[<=>]\s?0?\.\d|\bcorrelation\b|"
          r"\bregression\b|\bdistribution of|\bpercentage of|\bproportion of|\bfits?\b|\bdose[- ]response|"
          r"\btime course|\bfrequency\b|\bincidence\b|\bstatistically|\bcorrelação|\bgráfico",
          T.CHART, 1.5),
    _rule(r"\bschemati|\bdiagram|\bflow ?chart|\bflow diagram|\billustrat|\bcartoon|\bdrawing|\bdrawn\b|"
          r"\bscheme\b|\bworkflow|\bstudy design|\bCONSORT\b|\bPRISMA\b|\bphylogen|\bdendrogram|"
          r"\bproposed model|\bproposed mechanism|\bengraving|\bgenetic organi[sz]ation|\bdomain (?:architecture|"
          r"organi[sz]ation)|\bgenome map|\bcircular map", T.DIAGRAM, 3),
    _rule(r"\bmodel of\b|\boverview of|\bsetup\b|\bset-up\b|\bpathway\b|\bmaps? of\b|\bnetwork\b|"
          r"\bstructures? of\b|\barchitecture\b|\borgani[sz]ation of\b|\balgorithm|\btimeline|\bconcept\b|"
          r"\bprinciple of|\brepresentation of|\bstrategy\b|\bconstruct\b|\btree\b", T.DIAGRAM, 1.5),
    _rule(r"\btables?\b", T.TABLE, 1),
)

_TABLE_LABEL = re.compile(r"^\s*(?:table|tabela|tabla|tableau)\b", re.IGNORECASE)
_INDEX = {t: i for i, t in enumerate(TYPES)}


def _matched(text: str) -> set[int]:
    """Indexes of the rules that match ``text``."""
    return {i for i, rule in enumerate(RULES) if rule.pattern.search(text)} if text else set()


def caption_scores(
    caption: str, *, title: str | None = None, label: str | None = None, mentions: Sequence[str] = ()
) -> np.ndarray:
    """float32 ``[len(TYPES)]`` evidence for each type from a figure's text (see the module docstring).

    A label that starts with "Table" adds 6 to :attr:`FigureType.TABLE` (a table set as an image).
    Everything zero means the text names no type.
    """
    scores = np.zeros(len(TYPES), dtype=np.float32)
    main = " ".join(part for part in (title, caption, label) if part)
    strong = _matched(main)
    weak = _matched(" ".join(m for m in mentions if isinstance(m, str))) - strong
    for idx, factor in ((strong, 1.0), (weak, MENTION_WEIGHT)):
        for i in idx:
            rule = RULES[i]
            for t in rule.types:
                scores[_INDEX[t]] += rule.weight * factor
    if label and _TABLE_LABEL.match(label):
        scores[_INDEX[FigureType.TABLE]] += 6.0
    return scores


def caption_type(scores: np.ndarray) -> FigureType:
    """The caption-only prediction: the type with the most evidence, :attr:`FigureType.OTHER` when
    there is none (ties go to the earlier type in :data:`TYPES`)."""
    if not np.any(scores > 0):
        return FigureType.OTHER
    return TYPES[int(np.argmax(scores))]
