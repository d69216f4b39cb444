"""imbalens.explain.samples: which boxed image each finding's Figure 1 row shows."""

from __future__ import annotations

import pandas as pd

from imbalens.explain.samples import pick_boxed_images


def test_pick_boxed_images_prefers_distinct_images() -> None:
    boxes = pd.DataFrame(
        {
            "image": ["b.png", "a.png", "a.png", "c.png"],
            "finding": ["Mass", "Mass", "Nodule", "Nodule"],
        }
    )
    assert pick_boxed_images(boxes, ["Mass", "Nodule", "Hernia"]) == {
        "Mass": "a.png",
        "Nodule": "c.png",
    }


def test_pick_boxed_images_reuses_an_image_when_it_is_the_only_one() -> None:
    boxes = pd.DataFrame({"image": ["a.png", "a.png"], "finding": ["Mass", "Nodule"]})
    assert pick_boxed_images(boxes, ["Nodule", "Mass"]) == {"Nodule": "a.png", "Mass": "a.png"}


def test_pick_boxed_images_follows_the_requested_order() -> None:
    boxes = pd.DataFrame(
        {"image": ["a.png", "a.png", "b.png"], "finding": ["Mass", "Nodule", "Nodule"]}
    )
    # Nodule asked first takes a.png; Mass then has no fresh image and reuses a.png
    assert pick_boxed_images(boxes, ["Nodule", "Mass"]) == {"Nodule": "a.png", "Mass": "a.png"}
    assert pick_boxed_images(boxes, ["Mass", "Nodule"]) == {"Mass": "a.png", "Nodule": "b.png"}
