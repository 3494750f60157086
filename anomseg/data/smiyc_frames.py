"""Frame lists of the SegmentMeIfYouCan splits, as road-anomaly-benchmark defines them (facts, not code).

Source: github.com/SegmentMeIfYouCan/road-anomaly-benchmark at 1c7804e,
``road_anomaly_benchmark/datasets/tracks.py`` (LostAndFound, ObstacleTrack) and ``tracks_extra.py``
(AnomalyTrack per-class and test lists, Fishyscapes LAF); see ../shared/docs/SMIYC.md.
"""

from __future__ import annotations

# AnomalyTrack-test (100 frames, labels hidden): "<object><NNNN>" for NNNN in 0..count-1 (tracks_extra.py
# RoadAnomalyByClass 'test'); the per-class splits list the same frames, except that 'vehicles' keeps only
# carriage0001 of the eight carriages ("only carriage where horse is not visible").
ANOMALY_TRACK_ANIMALS = {
    "zebra": 2, "sheep": 11, "rhino": 2, "pig": 2, "lion": 1, "leopard": 1, "horse": 5, "goose": 1, "elephant": 12,
    "donkey": 2, "deer": 2, "cow": 14, "cock": 1, "camel": 2, "bear": 1,
}
ANOMALY_TRACK_VEHICLES = {"airplane": 2, "boat_trailer": 5, "caravan": 8, "carriage": 8, "scooter": 1, "tractor": 6}
ANOMALY_TRACK_OTHER = {"coffin": 1, "cones": 7, "hay": 1, "piano": 1, "tent": 1}


def _numbered(counts: dict[str, int]) -> list[str]:
    return [f"{name}{i:04d}" for name, n in counts.items() for i in range(n)]


ANOMALY_TRACK_SPLITS = {
    "animals": sorted(_numbered(ANOMALY_TRACK_ANIMALS)),
    "vehicles": sorted(f for f in _numbered(ANOMALY_TRACK_VEHICLES) if not f.startswith("carriage") or f == "carriage0001"),
    "other": sorted(_numbered(ANOMALY_TRACK_OTHER)),
    "validation": [f"validation{i:04d}" for i in range(10)],
    "test": sorted(_numbered({**ANOMALY_TRACK_ANIMALS, **ANOMALY_TRACK_VEHICLES, **ANOMALY_TRACK_OTHER})),
}

# ObstacleTrack scenes (fid.split("_")[0]) and splits (tracks.py DatasetObstacleTrack)
OBSTACLE_SCENES = frozenset({"curvy-street", "one-way-street", "gravel", "greyasphalt", "motorway", "paving", "darkasphalt",
                             "darkasphalt2", "snowstorm1", "snowstorm2", "driveway", "validation"})
OBSTACLE_SPLITS = {  # split -> (scenes, excluded fid prefixes, expected frame count or None)
    "test": (OBSTACLE_SCENES - {"snowstorm1", "snowstorm2", "driveway", "validation"}, (), 327),
    "all": (OBSTACLE_SCENES, (), None),  # the reference's check is commented out (452)
    "noNight": (OBSTACLE_SCENES - {"driveway"}, (), 382),
    "night": (frozenset({"driveway"}), (), 30),
    "snowstorm": (frozenset({"snowstorm1", "snowstorm2"}), (), 55),
    "validation": (frozenset({"validation"}), tuple(f"validation_{n}" for n in (19, 21, 22, 23, 24, 25, 26, 27, 28, 29)), 30),
}

# LostAndFound (tracks.py DatasetLostAndFound): split -> (folder, dropped sorted-order indices, excluded fid prefixes,
# expected count, persistence name)
_LAF_INVALID_TEST = (17, 37, 55, 72, 91, 110, 129, 153, 174, 197, 218, 353, 490, 618, 686, 792, 793)  # empty labels
LAF_SPLITS = {
    "train": ("train", (), (), 1036, "LostAndFound-train"),
    "test": ("test", (), (), 1203, "LostAndFound-test"),
    "trainValid": ("train", (44, 67, 88, 109, 131, 614), (), 1030, "LostAndFound-train"),
    "testValid": ("test", _LAF_INVALID_TEST, (), 1186, "LostAndFound-test"),
    "testNoKnown": ("test", _LAF_INVALID_TEST, ("15_Rechbergstr_Deckenpfronn",  # children
                                                 "01_Hanns_Klemm_Str_45_000006", "01_Hanns_Klemm_Str_45_000007",  # bicycles
                                                 "10_Schlossberg_9_000004"), 1043, "LostAndFound-test"),
}
LAF_FULL_COUNTS = {"train": 1036, "test": 1203}

# FishyLAFAnomaly-val (tracks_extra.py FishyscapesLAFSubset 'Anomaly-val'): scene -> sequence -> frame times
_FISHY_LAF_VAL = {
    "01_Hanns_Klemm_Str_45": {
        0: (80, 140, 200, 230, 260),
        1: (60, 120, 180, 210, 240),
        2: (70, 130, 190, 220),
        3: (30, 90, 150, 180, 210),
        4: (120, 180, 210),
        5: (80, 140, 200, 230),
        8: (60, 120, 180, 240),
        9: (90, 150, 210),
        10: (50, 110, 170, 200),
        11: (50, 110, 170, 200, 230, 260),
        12: (160, 220, 250, 280),
    },
    "04_Maurener_Weg_8": {
        0: (30, 90, 150, 180),
        1: (30, 90, 150, 180, 210),
        2: (60, 120, 150),
        3: (30, 90, 120),
        4: (20, 80, 140, 170, 200),
        5: (50, 110, 170, 200),
        6: (40, 100, 130),
        7: (20, 80, 140, 170),
        8: (40, 100, 130, 160, 190),
    },
    "13_Elly_Beinhorn_Str": {
        0: (50, 110, 170, 230, 260, 290),
        1: (80, 140, 200, 230),
        2: (30, 90, 120),
        3: (80, 140, 200, 260),
    },
}
FISHY_LAF_VAL = sorted(f"{scene}_{seq:06d}_{t:06d}" for scene, seqs in _FISHY_LAF_VAL.items()
                       for seq, times in seqs.items() for t in times)
# FishyLAFObstacle-val drops the two frames whose LAF labels are invalid
FISHY_LAF_INVALID_LAF = frozenset({"01_Hanns_Klemm_Str_45_000001_000240", "01_Hanns_Klemm_Str_45_000005_000230"})
