"""``ImageInspector``: one image through the same intake and counting as chat, reported back.

The image is prepared under the model's ``ImagePolicy`` (the same sizing and checks a chat request
gets, so an image chat would refuse is refused here with the same error) and counted alone by the
bound engine; its ``image_tokens`` are what the image adds to a chat request's ``prompt_tokens``.
"""

from __future__ import annotations

from vlmserve.engine.types import MediaInput, MediaPart, Message, Prompt
from vlmserve.media.intake import MediaIntake
from vlmserve.media.resize import resolve_detail
from vlmserve.media.types import MediaRef
from vlmserve.protocol.images import ImageInspection, ImageInspectRequest
from vlmserve.serving.prepare import PromptPreparer


class ImageInspector:
    def __init__(self, preparer: PromptPreparer, intake: MediaIntake) -> None:
        self._preparer = preparer
        self._intake = intake

    async def inspect(self, req: ImageInspectRequest, tenant: str = "") -> ImageInspection:
        spec, engine = self._preparer.lookup(req.model)
        policy = await self._preparer.image_policy(spec, engine)
        detail = req.image_url.detail or "auto"
        ref = MediaRef(req.image_url.url, "image", "image_url", 1, detail)
        (image,) = await self._intake.prepare_images([ref], policy, owner=tenant)
        media = MediaInput("image", (image.image,), image.identity)
        prompt = Prompt((Message("user", (MediaPart(0),)),), (media,))
        usage = await engine.count_tokens(prompt)
        return ImageInspection(
            model=spec.id,
            format=image.format,
            original_size=list(image.original_size),
            size=list(image.size),
            detail=resolve_detail(detail, policy),
            tokens=usage.image_tokens,
            num_bytes=image.num_bytes,
            metadata_removed=list(image.metadata_removed),
        )
