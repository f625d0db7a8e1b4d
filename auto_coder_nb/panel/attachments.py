"""The panel's attach control: a name (an image file, a variable holding a figure or an image, or `last` for the
notebook's last image output) and an Attach button; attached images show as thumbnails above the input and
go with the next message. Also the thumbnails of images in the transcript (attachments, run_code's plots)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import ipywidgets as widgets

from ..images import Image, ImageError
from .parts import make_box, make_button, make_html
from .view import PanelView


def thumbnails_html(images: Sequence[Image]) -> str:
    """Small previews, each titled with what it is (name, format, size)."""
    return "".join(f'<img class="autocoder-thumb" src="{image.data_url()}" alt="{html.escape(image.describe())}" '
                   f'title="{html.escape(image.describe())}">' for image in images)


class Attachments:
    def __init__(self, view: PanelView, resolve: Callable[[str], Image]) -> None:
        self.view = view
        self.resolve = resolve  # a name to an image (raises ImageError): the face knows where names live
        self.images: list[Image] = []
        self.name = widgets.Text(placeholder="Attach an image: a file, a variable or last",
                                 continuous_update=False, layout=widgets.Layout(width="auto", flex="1 1 auto"))
        self.name.add_class("autocoder-attach-name")
        self.button = make_button("Attach", "", "autocoder-attach",
                                  "Send an image with the next message (vision models)")
        self.button.on_click(view.handover(lambda: self.start(self.name.value)))
        self.shown = make_html("", "autocoder-attachments")
        self.widget = make_box([self.name, self.button, self.shown], "autocoder-attach-row", horizontal=True)

    def start(self, name: str) -> None:
        """Add `name` in a task on the panel's loop (checking vision may ask the server)."""
        self.view.loop.create_task(self.add(name))

    async def add(self, name: str) -> None:
        """Check and add an image; a refusal (no vision, not an image, missing...) shows as an error line."""
        name = name.strip()
        if not name:
            return
        view = self.view
        try:
            if not await view.session.agent.sees_images():
                view.error(view.session.agent.no_vision_message())
                return
            image = self.resolve(name)
        except ImageError as exc:
            view.error(str(exc))
            return
        except Exception as exc:  # a task's error would only reach the log console
            view.error(f"Attach failed: {type(exc).__name__}: {exc}")
            return
        self.images.append(image)
        self.name.value = ""
        self._show()

    def take(self) -> list[Image]:
        """The attached images, for the message being sent; the control empties."""
        taken, self.images = self.images, []
        self._show()
        return taken

    def _show(self) -> None:
        self.shown.value = thumbnails_html(self.images)
