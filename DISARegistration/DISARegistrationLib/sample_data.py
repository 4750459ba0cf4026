"""The bundled sample case (RESECT Case 24, CC BY 4.0) in Slicer: a Sample Data entry that loads
the ultrasound and the T1 MR from the extension's own files, and its expert landmarks as point
lists. Loads before torch is installed (the engine is imported only to read the landmarks)."""
from __future__ import annotations

import os
import urllib.parse
import urllib.request

__all__ = ["SAMPLE_CATEGORY", "SAMPLE_NAME", "register_sample_data", "load_sample_landmarks"]

SAMPLE_CATEGORY = "DISA Registration"
SAMPLE_NAME = "DISA Case24 US-MR"
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_FOLDER = os.path.join(MODULE_DIR, "Resources", "SampleData", "Case24")
#: Ultrasound (fixed) then MR (moving); disa.sample_data.case24 names the same files.
SAMPLE_FILES = ["Case24-US.nii.gz", "Case24-T1.nii.gz"]
SAMPLE_NODE_NAMES = ["Case24-US", "Case24-T1"]
#: SampleData copies files into its cache and reuses them while the checksum matches.
SAMPLE_CHECKSUMS = ["SHA256:c2d5e7dc14ceb3bd68f0aaa9f7ae46de8ac36ac7faa7157e4382846345aba291",
                    "SHA256:0bbf3c5020a982118c1749b96d708451962ec7298968fab10742b945a4af8ecc"]
SAMPLE_LANDMARKS = "Case24-MRI-beforeUS.tag"  # MRI xyz then US xyz per row, RAS
ICON = os.path.join(MODULE_DIR, "Resources", "Icons", "DISARegistration.png")


def register_sample_data() -> None:
    """One click in the Sample Data module loads the bundled ultrasound/MR pair (local files)."""
    import SampleData  # Slicer's Sample Data module (needs the application)

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY, sampleName=SAMPLE_NAME, thumbnailFileName=ICON,
        uris=[urllib.parse.urljoin("file:", urllib.request.pathname2url(os.path.join(SAMPLE_FOLDER, f)))
              for f in SAMPLE_FILES],
        fileNames=SAMPLE_FILES, nodeNames=SAMPLE_NODE_NAMES, checksums=SAMPLE_CHECKSUMS,
        loadFileTypes=["VolumeFile", "VolumeFile"])


def load_sample_landmarks(scene):
    """The sample's 16 expert landmark pairs as two point lists in ``scene`` (reused by name);
    returns (ultrasound landmarks, MR landmarks)."""
    from disa.evaluate.landmarks import read_tag

    from . import mrml_bridge as bridge

    mri, us = read_tag(os.path.join(SAMPLE_FOLDER, SAMPLE_LANDMARKS))
    nodes = []
    for nodeName, landmarks in ((SAMPLE_NODE_NAMES[0], us), (SAMPLE_NODE_NAMES[1], mri)):
        name = nodeName + " landmarks"
        node = scene.GetFirstNodeByName(name)
        if node is None or not node.IsA("vtkMRMLMarkupsFiducialNode"):
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        nodes.append(bridge.markups_from_points(node, landmarks.points, landmarks.labels))
    return tuple(nodes)
