"""The anatomy the text path knows: categories, their synonyms and whether they come in a left and a right.

Names follow TotalSegmentator's "total" task (the names in ../shared/data), coarsened to what a typed name
means on one slice: every rib is a "rib", every vertebra a "vertebra", every lung lobe its lung. A finer
name still resolves (``rib_left_7`` -> rib, left); the detail it carried is reported, not segmented
separately. Category ids are the rows of the 2D network's text embedding: ids are stable, new categories
are appended. The bundle ships its own copy (``text_vocabulary.json``), with the categories it was trained on.
"""
from __future__ import annotations

# (id, name, sided, synonyms): synonyms are matched like names (case, separators, word order, plurals)
CATEGORIES = [
    (1, "spleen", False, ["splenic parenchyma"]),
    (2, "kidney", True, ["renal", "ren"]),
    (3, "gallbladder", False, ["gall bladder", "cholecyst"]),
    (4, "liver", False, ["hepar", "hepatic parenchyma"]),
    (5, "stomach", False, ["gaster"]),
    (6, "pancreas", False, []),
    (7, "adrenal gland", True, ["adrenal", "suprarenal gland"]),
    (8, "lung", True, ["pulmonary", "lung lobe", "lobe"]),
    (9, "esophagus", False, ["oesophagus", "gullet"]),
    (10, "trachea", False, ["windpipe"]),
    (11, "thyroid gland", False, ["thyroid"]),
    (12, "small bowel", False, ["small intestine", "ileum", "jejunum"]),
    (13, "duodenum", False, []),
    (14, "colon", False, ["large bowel", "large intestine"]),
    (15, "urinary bladder", False, ["bladder"]),
    (16, "prostate", False, ["prostate gland"]),
    (17, "vertebra", False, ["vertebrae", "vertebral body", "vertebral column", "spine", "spinal column",
                             "sacrum"]),
    (18, "heart", False, ["cardiac"]),
    (19, "aorta", False, ["aortic"]),
    (20, "pulmonary vein", False, []),
    (21, "brachiocephalic trunk", False, []),
    (22, "subclavian artery", True, []),
    (23, "common carotid artery", True, ["carotid", "carotid artery"]),
    (24, "brachiocephalic vein", True, []),
    (25, "atrial appendage", True, []),
    (26, "superior vena cava", False, ["svc"]),
    (27, "inferior vena cava", False, ["ivc", "vena cava"]),
    (28, "portal vein and splenic vein", False, ["portal vein", "splenic vein", "portal venous system"]),
    (29, "iliac artery", True, ["common iliac artery"]),
    (30, "iliac vein", True, ["iliac vena", "common iliac vein"]),
    (31, "humerus", True, []),
    (32, "scapula", True, ["shoulder blade"]),
    (33, "clavicle", True, ["collarbone", "clavicula"]),
    (34, "femur", True, ["thigh bone"]),
    (35, "hip", True, ["hip bone", "pelvis", "pelvic bone", "os coxae"]),
    (36, "spinal cord", False, ["cord", "myelon"]),
    (37, "gluteus maximus", True, []),
    (38, "gluteus medius", True, []),
    (39, "gluteus minimus", True, []),
    (40, "autochthon", True, ["autochthonous muscle", "erector spinae", "paraspinal muscle"]),
    (41, "iliopsoas", True, ["psoas", "psoas muscle", "iliopsoas muscle"]),
    (42, "brain", False, ["cerebrum"]),
    (43, "skull", False, ["cranium"]),
    (44, "rib", True, ["costa", "ribs"]),
    (45, "sternum", False, ["breastbone"]),
    (46, "costal cartilage", False, ["costal cartilages", "rib cartilage"]),
    (47, "lesion", False, ["tumor", "tumour", "mass", "nodule", "metastasis", "cyst"]),
    (48, "brain tumor", False, ["brain tumour", "glioma", "brain lesion", "glioblastoma"]),
    (49, "blood vessel", False, ["vessel", "artery", "vein"]),
    (50, "bone", False, ["osseous", "skeleton"]),
    (51, "body", False, ["patient", "body outline", "whole body"]),
    (52, "soft tissue", False, ["tissue"]),
    (53, "organ", False, []),
    # the cardiac MR sets' structures (ACDC, MS-CMRSeg, LA): "left ventricle" is the left ventricle's blood pool
    (54, "heart ventricle", True, ["ventricle", "cardiac ventricle", "ventricular cavity", "ventricular blood pool"]),
    (55, "heart myocardium", False, ["myocardium", "myocardial wall", "ventricular myocardium", "lv myocardium", "heart muscle",
                                     "myocard"]),
    (56, "heart atrium", True, ["atrium", "cardiac atrium", "atrial cavity"]),
]

SIDE_WORDS = {"left": "left", "l": "left", "lt": "left", "sinister": "left", "sin": "left",
              "right": "right", "r": "right", "rt": "right", "dexter": "right", "dex": "right"}
SIDES = ("", "left", "right")   # side ids 0, 1, 2

#: words that narrow a structure down further than the categories go; dropped from the match, reported
DETAIL_WORDS = {"upper", "lower", "middle", "superior", "inferior", "lobe", "cervical", "thoracic", "lumbar",
                "sacral", "anterior", "posterior", "segment", "part"}
#: words that say nothing about what to segment ("A segmentation area of a liver.")
FILLER_WORDS = {"a", "an", "the", "of", "segmentation", "segment", "area", "region", "structure", "please",
                "and", "my", "this", "that", "mask"}
#: irregular plurals; regular ones lose their "s" when the singular is a known word
PLURALS = {"vertebrae": "vertebra", "ribs": "rib", "kidneys": "kidney", "lungs": "lung", "lesions": "lesion",
           "metastases": "metastasis", "cartilages": "cartilage", "glands": "gland", "arteries": "artery",
           "veins": "vein", "vessels": "vessel", "bones": "bone", "tumors": "tumor", "tumours": "tumour",
           "nodules": "nodule", "masses": "mass", "cysts": "cyst", "femora": "femur", "scapulae": "scapula",
           "clavicles": "clavicle", "lobes": "lobe", "hips": "hip"}
