"""SentencePiece unigram tokenizer with auto_avsr's ids (taken from a units file, not from SentencePiece)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from transformers import PreTrainedTokenizer


__all__ = ["MMAVSRTokenizer", "AUTO_AVSR_ASSETS"]

AUTO_AVSR_ASSETS = Path(__file__).resolve().parent / "assets"
SPIECE_UNDERLINE = "\u2581"
BLANK_TOKEN = "<blank>"
UNK_TOKEN = "<unk>"
SOS_EOS_TOKEN = "<sos/eos>"


def _read_units(units_file: str | os.PathLike) -> dict[str, int]:
    """`piece id` lines -> {piece: id}; the ids must be 1..N in order, with `<unk>` first (auto_avsr's layout)."""
    units = {}
    with open(units_file, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit():
                raise ValueError(f"{units_file}:{line_number}: expected 'piece id', got {line.rstrip()!r}")
            piece, index = fields[0], int(fields[1])
            if index != line_number:
                raise ValueError(f"{units_file}:{line_number}: id {index} is not the line number {line_number}")
            units[piece] = index
    if units.get(UNK_TOKEN) != 1:
        raise ValueError(f"{units_file}: the first line must be '{UNK_TOKEN} 1'")
    return units


class MMAVSRTokenizer(PreTrainedTokenizer):
    """SentencePiece unigram tokenizer whose ids follow auto_avsr: `<blank>` 0 (CTC blank and padding), `<unk>` 1,
    the units file's pieces 1..N (id = number on its line), `<sos/eos>` N+1; vocabulary size N+2 (5049 for LRS3).

    `encode(text)` appends `<sos/eos>` (the model prepends it as sos itself); `decode(ids, skip_special_tokens=True)`
    joins the pieces, turns `▁` into spaces and strips. Text is upper-cased first when `do_upper_case=True`
    (auto_avsr's vocabulary holds upper-case pieces only).

    Args:
        vocab_file: the SentencePiece `.model` file.
        units_file: the units file, one `piece id` per line.
        do_upper_case: upper-case text before tokenizing.
    """

    vocab_files_names = {"vocab_file": "spm.model", "units_file": "spm_units.txt"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str,
        units_file: str,
        do_upper_case: bool = True,
        pad_token: str = BLANK_TOKEN,
        unk_token: str = UNK_TOKEN,
        bos_token: str = SOS_EOS_TOKEN,
        eos_token: str = SOS_EOS_TOKEN,
        **kwargs,
    ):
        self.vocab_file = str(vocab_file)
        self.units_file = str(units_file)
        self.do_upper_case = do_upper_case
        self.sp_model = spm.SentencePieceProcessor(model_file=self.vocab_file)
        units = _read_units(self.units_file)
        # id = position in this list: blank, the units in file order, sos/eos
        self._id_to_token = [BLANK_TOKEN, *units, SOS_EOS_TOKEN]
        self._token_to_id = {token: index for index, token in enumerate(self._id_to_token)}
        kwargs.setdefault("special_tokens_pattern", "eos")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(
            do_upper_case=do_upper_case,
            pad_token=pad_token,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            **kwargs,
        )

    @classmethod
    def from_auto_avsr(cls, **kwargs) -> MMAVSRTokenizer:
        """The vocabulary of auto_avsr's released LRS3 models (`unigram5000`, 5049 ids), shipped with this package."""
        return cls(
            vocab_file=str(AUTO_AVSR_ASSETS / "unigram5000.model"),
            units_file=str(AUTO_AVSR_ASSETS / "unigram5000_units.txt"),
            **kwargs,
        )

    @classmethod
    def train_vocabulary(
        cls,
        texts: Iterable[str],
        output_dir: str | os.PathLike,
        vocab_size: int = 5000,
        model_type: str = "unigram",
        do_upper_case: bool = True,
        **trainer_kwargs,
    ) -> MMAVSRTokenizer:
        """Train a SentencePiece vocabulary on `texts` and write `{model_type}{vocab_size}.model` and
        `{model_type}{vocab_size}_units.txt` to `output_dir` in auto_avsr's format, then load them.

        The units file lists `<unk> 1` and then every ordinary piece of the trained model, sorted, numbered from 2.
        `trainer_kwargs` go to `sentencepiece.SentencePieceTrainer.train` (e.g. `character_coverage`,
        `hard_vocab_limit=False` for small corpora).
        """
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        prefix = output_dir / f"{model_type}{vocab_size}"
        lines = [text.upper() if do_upper_case else text for text in texts]
        lines = [line.strip() for line in lines if line.strip()]
        if not lines:
            raise ValueError("train_vocabulary: the text corpus is empty")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_prefix=str(prefix),
                vocab_size=vocab_size,
                model_type=model_type,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                minloglevel=2,
                **trainer_kwargs,
            )
        except RuntimeError as error:
            raise ValueError(f"train_vocabulary: SentencePiece training failed ({error})") from error
        model = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
        pieces = sorted(
            model.id_to_piece(index)
            for index in range(model.get_piece_size())
            if not (model.is_unknown(index) or model.is_control(index))
        )
        with open(f"{prefix}_units.txt", "w", encoding="utf-8") as handle:
            handle.write(f"{UNK_TOKEN} 1\n")
            handle.writelines(f"{piece} {index}\n" for index, piece in enumerate(pieces, start=2))
        return cls(vocab_file=f"{prefix}.model", units_file=f"{prefix}_units.txt", do_upper_case=do_upper_case)

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._token_to_id)
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        if self.do_upper_case:
            text = text.upper()
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self._token_to_id.get(token, self._token_to_id[UNK_TOKEN])

    def _convert_id_to_token(self, index: int) -> str:
        if 0 <= index < len(self._id_to_token):
            return self._id_to_token[index]
        return UNK_TOKEN

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens).replace(SPIECE_UNDERLINE, " ").strip()

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, str]:
        """Copy the SentencePiece model and the units file into `save_directory`."""
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        saved = []
        for attribute, name in self.vocab_files_names.items():
            source = getattr(self, attribute)
            target = os.path.join(save_directory, prefix + name)
            if os.path.abspath(source) != os.path.abspath(target):
                shutil.copyfile(source, target)
            saved.append(target)
        return tuple(saved)
