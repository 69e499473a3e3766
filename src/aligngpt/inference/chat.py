"""Interactive multi-turn chat about one image at a time (the engine behind ``aligngpt chat``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from aligngpt.inference.chart import alignment_chart
from aligngpt.inference.images import IMAGE_SUFFIXES, ImagePolicy, list_images, load_image
from aligngpt.inference.pipeline import AlignGPTPipeline, GenerationSettings
from aligngpt.inference.streaming import Alignment, StreamRequest, generate_streams

HELP = """Commands:
  /image PATH_OR_URL_OR_NUMBER  switch image (a number picks from the folder listing) and start over
  /images                       list the images of the folder given with --image
  /reset                        forget the conversation, keep the image
  /alignment                    show the gate weights of the last answer
  /help                         this text
  /quit                         leave (Ctrl-D works too)"""


class _QueueSink:
    """Collects a single row's events for :meth:`ChatSession.stream`."""

    def __init__(self, on_text: Callable[[str], None]):
        self.on_text = on_text
        self.alignment: Alignment | None = None
        self.finish_reason: str | None = None

    def start(self, alignment: Alignment | None, prompt_tokens: int) -> None:
        self.alignment = alignment

    def text(self, piece: str) -> None:
        self.on_text(piece)

    def finish(self, reason: str, completion_tokens: int) -> None:
        self.finish_reason = reason


@dataclass
class ChatSession:
    """A conversation about ``image`` (or text only when ``None``).

    ``history`` holds ``(user, assistant)`` pairs; assistant texts are the visible answers only (no stop strings, no
    special tokens), so later prompts never contain a doubled separator.
    """

    pipeline: AlignGPTPipeline
    image: Image.Image | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    history: list[tuple[str, str]] = field(default_factory=list)
    last_alignment: Alignment | None = None

    def prompt(self, message: str) -> str:
        return self.pipeline.build_prompt(message, self.image is not None, self.history)

    def ask(self, message: str, on_text: Callable[[str], None] = lambda piece: None) -> str:
        """Answer ``message``, calling ``on_text`` with each piece as it is generated; returns the whole answer.

        The turn enters the history only when generation completes (an interrupted turn leaves no trace).
        """
        sink = _QueueSink(on_text)
        request = StreamRequest(self.prompt(message), self.image, self.settings, sink)
        result = generate_streams(self.pipeline, [request])[0]
        self.history.append((message, result.text))
        self.last_alignment = result.alignment
        return result.text

    def reset(self, image: Image.Image | None = None, keep_image: bool = True) -> None:
        self.history.clear()
        self.last_alignment = None
        if not keep_image:
            self.image = image


def iter_commands(read_line: Callable[[], str]) -> Iterator[str]:
    """Lines from ``read_line`` until EOF (``EOFError``) or ``/quit``; blank lines are skipped."""
    while True:
        try:
            line = read_line()
        except EOFError:
            return
        line = line.strip()
        if line in ("/quit", "/exit"):
            return
        if line:
            yield line


@dataclass
class ImageChoice:
    """The images a chat can switch between: one file/URL, or the files of a folder."""

    source: str | None
    folder_images: Sequence[Path] = ()

    @classmethod
    def from_argument(cls, source: str | None) -> ImageChoice:
        if source and Path(source).expanduser().is_dir():
            images = list_images(Path(source).expanduser())
            if not images:
                raise ValueError(f"{source}: no image files ({' '.join(IMAGE_SUFFIXES)}) in this folder")
            return cls(str(images[0]), images)
        return cls(source)

    def resolve(self, argument: str) -> str:
        """A ``/image`` argument: a number picks from the folder listing, anything else is a path or URL."""
        if argument.isdigit() and self.folder_images:
            index = int(argument)
            if not 0 <= index < len(self.folder_images):
                raise ValueError(f"pick a number from 0 to {len(self.folder_images) - 1}")
            return str(self.folder_images[index])
        return argument


def run_chat(
    session: ChatSession,
    choice: ImageChoice,
    read_line: Callable[[], str],
    write: Callable[[str], None],
    show_alignment: bool = False,
    policy: ImagePolicy | None = None,
) -> None:
    """The interactive loop: ``read_line`` gives user lines, ``write`` prints (no newline added)."""

    def show_gate() -> None:
        if session.last_alignment is None:
            write("(no gate weights: text-only prompt or a model without a gate)\n")
            return
        write(f"gate weights α over the local alignment levels ({session.last_alignment.mode}):\n")
        for line in alignment_chart(session.last_alignment.weights):
            write(f"  {line}\n")

    for line in iter_commands(read_line):
        command, _, argument = line.partition(" ")
        if command == "/help":
            write(HELP + "\n")
        elif command == "/reset":
            session.reset()
            write("(conversation cleared)\n")
        elif command == "/images":
            for index, path in enumerate(choice.folder_images):
                write(f"  {index}: {path.name}\n")
            if not choice.folder_images:
                write("(--image was not a folder)\n")
        elif command == "/image":
            try:
                source = choice.resolve(argument.strip())
                session.reset(load_image(source, policy), keep_image=False)
            except ValueError as err:
                write(f"error: {err}\n")
                continue
            write(f"(new image: {source}; conversation cleared)\n")
        elif command == "/alignment":
            show_gate()
        elif command.startswith("/") and " " not in command and len(command) > 1 and command[1:].isalpha():
            write(f"unknown command {command}; /help lists them\n")
        else:
            write("ASSISTANT: ")
            try:
                session.ask(line, write)
            except KeyboardInterrupt:
                write("\n(interrupted; this turn was dropped)\n")
                continue
            write("\n")
            if show_alignment:
                show_gate()
