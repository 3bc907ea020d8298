"""eSpeak NG, through ``ctypes``, with fresh state for every utterance (see :class:`Espeak`)."""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
PARAMETER_IDS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_ESPEAK_LOCK = threading.Lock()


class Espeak:
    """eSpeak NG from the ``espeakng-loader`` wheel, with fresh state for every utterance.

    eSpeak keeps static state (pitch flutter phase, gain control, random generator) across calls,
    even across ``espeak_Terminate``/``espeak_Initialize``, and seeds its random generator (breath
    noise of some voices) from the clock. So the library is copied once into a private temporary
    folder and loaded, used and unloaded (``dlclose``) for each utterance, with the random generator
    seeded explicitly: an utterance's samples then depend only on its text, voice, settings and
    noise seed (about 10 ms each).

    Use as a context manager::

        with Espeak() as tts:
            samples, rate = tts.speak("Hello there.", "en-us", {"rate": 175})
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader  # optional
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise ImportError("the toy corpus needs the espeakng-loader wheel: pip install espeakng-loader") from err
        self._tmp = tempfile.TemporaryDirectory(prefix="ambinb-espeak-")
        source = Path(espeakng_loader.get_library_path())
        self._lib_path = str(Path(self._tmp.name) / f"private-{source.name}")
        shutil.copyfile(source, self._lib_path)
        self._data_path = espeakng_loader.get_data_path().encode()
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)

    def __enter__(self) -> Espeak:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the private copy of the library."""
        self._tmp.cleanup()

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), n: int, events: int) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    @contextlib.contextmanager
    def _fresh_library(self):
        lib = ctypes.CDLL(self._lib_path)
        try:
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_Initialize.restype = ctypes.c_int
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path, _INITIALIZE_DONT_EXIT)
            if rate <= 0:
                raise RuntimeError(f"eSpeak NG failed to initialise with data {self._data_path.decode()!r}")
            try:
                yield lib, rate
            finally:
                lib.espeak_Terminate()
        finally:
            _ctypes.dlclose(lib._handle)

    def version(self) -> str:
        """The eSpeak NG version string, e.g. ``'1.52.0'``."""
        with _ESPEAK_LOCK, self._fresh_library() as (lib, _):
            lib.espeak_Info.argtypes = [ctypes.c_void_p]
            lib.espeak_Info.restype = ctypes.c_char_p
            return lib.espeak_Info(None).decode()

    def speak(self, text: str, voice: str, settings: dict[str, int], noise_seed: int = 0) -> tuple[np.ndarray, int]:
        """Speak ``text`` with ``voice`` and eSpeak ``settings`` (keys of ``PARAMETER_IDS``).

        ``noise_seed`` seeds eSpeak's own random generator (breath noise of some voices), which it
        otherwise seeds from the clock.

        Returns:
            ``(samples, sample_rate)``: int16 mono samples at eSpeak's rate (22050 Hz).

        Raises:
            ValueError: an unknown voice or setting (eSpeak itself would keep the previous voice).
            RuntimeError: any other non-zero eSpeak return code, or no audio.
        """
        unknown = set(settings) - set(PARAMETER_IDS)
        if unknown:
            raise ValueError(f"unknown eSpeak settings {sorted(unknown)}; known: {sorted(PARAMETER_IDS)}")
        with _ESPEAK_LOCK, self._fresh_library() as (lib, rate):
            lib.espeak_SetSynthCallback(self._callback)
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed(int(noise_seed))
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            code = lib.espeak_SetVoiceByName(voice.encode())
            if code != 0:
                raise ValueError(f"eSpeak NG cannot load voice {voice!r} (code {code})")
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            for key, value in settings.items():
                code = lib.espeak_SetParameter(PARAMETER_IDS[key], int(value), 0)
                if code != 0:
                    raise RuntimeError(f"eSpeak NG rejected {key}={value} (code {code})")
            lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            encoded = text.encode("utf-8")
            self._chunks = []
            code = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if code != 0:
                raise RuntimeError(f"eSpeak NG failed to speak {text!r} with {voice!r} (code {code})")
            lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise RuntimeError(f"eSpeak NG returned no audio for {text!r} with {voice!r}")
        return np.concatenate(chunks).astype(np.int16), rate

