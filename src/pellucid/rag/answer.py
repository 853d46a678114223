"""`rag ask`: retrieve, fit the sources into the model's context, stream a cited answer.

    answerer = Answerer(pellucid.load("smollm2-135m"))
    plan = answerer.plan(question, hits)          # the prompt, with as many sources as fit
    for chunk in answerer.generate(plan, temperature=0):
        print(chunk.text, end="")
    plan.cited(generation.text)                   # the sources the answer cites, by number

Fitting: the prompt plus `max_tokens` of answer must fit in the model's context window (`llm.ctx`). Sources
arrive best-first, so the lowest-ranked are dropped first; if even the best one alone does not fit, its text
is cut to what does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pellucid.errors import ContextLengthError
from pellucid.rag.index import Hit
from pellucid.rag.prompt import Source, answer_messages, cited_numbers, special_token_pattern, supporting_numbers

DEFAULT_ANSWER_TOKENS = 400


@dataclass
class AnswerPlan:
    question: str
    sources: list[Source]
    messages: list[dict]
    prompt_ids: list[int]
    dropped: list[Hit] = field(default_factory=list)  # retrieved, but did not fit the context
    truncated: bool = False  # the one remaining source was cut to fit

    def cited(self, answer: str) -> list[Source]:
        """The sources the answer cites by number, in order of first citation."""
        return [self.sources[n - 1] for n in cited_numbers(answer, len(self.sources))]

    def supporting(self, answer: str) -> list[Source]:
        """When the answer cites nothing: the sources whose words it repeats (see prompt.supporting_numbers)."""
        return [self.sources[n - 1] for n in supporting_numbers(answer, self.sources)]


class Answerer:
    def __init__(self, llm, *, max_tokens: int = DEFAULT_ANSWER_TOKENS):
        self.llm = llm
        self.max_tokens = max_tokens
        self.special = special_token_pattern(llm.tokenizer)

    @property
    def prompt_budget(self) -> int:
        return self.llm.ctx - self.max_tokens

    def plan(self, question: str, hits: list[Hit]) -> AnswerPlan:
        """The prompt with the best-ranked sources that fit in the context, leaving room for the answer."""
        sources = [Source(i, hit) for i, hit in enumerate(hits, 1)]
        plan = self._build(question, sources)
        while len(plan.prompt_ids) > self.prompt_budget and len(sources) > 1:
            sources = sources[:-1]
            plan = self._build(question, sources)
        plan.dropped = hits[len(sources) :]
        if len(plan.prompt_ids) > self.prompt_budget and sources:
            plan = self._truncate_only_source(question, sources[0], len(plan.prompt_ids) - self.prompt_budget)
            plan.dropped = hits[1:]
        if len(plan.prompt_ids) > self.prompt_budget:
            raise ContextLengthError(
                f"the question alone takes {len(plan.prompt_ids):,} tokens of the prompt budget "
                f"{self.prompt_budget:,} ({self.llm.ctx:,} context - {self.max_tokens:,} for the answer); "
                f"shorten it, lower --max-tokens or raise --ctx"
            )
        return plan

    def generate(self, plan: AnswerPlan, **sampling):
        """Stream the answer (a pellucid Generation) to the planned prompt."""
        from pellucid.api import BASE_MODEL_STOPS

        stop = [] if self.llm.has_chat_template else list(BASE_MODEL_STOPS)  # as LLM.chat does
        return self.llm.generate(plan.prompt_ids, max_tokens=self.max_tokens, stop=stop, **sampling)

    def _build(self, question: str, sources: list[Source]) -> AnswerPlan:
        messages = answer_messages(question, sources, self.special)
        return AnswerPlan(question, sources, messages, self.llm.chat_prompt_ids(messages))

    def _truncate_only_source(self, question: str, source: Source, overflow: int) -> AnswerPlan:
        tokenizer = self.llm.tokenizer
        ids = tokenizer.encode(source.hit.text, add_special=False)
        keep = max(len(ids) - overflow - 8, 0)  # 8: slack for tokens that merge differently at the new end
        hit = dataclasses.replace(source.hit, text=tokenizer.decode(ids[:keep]) + " [...]")
        plan = self._build(question, [Source(1, hit)])
        plan.truncated = True
        return plan
