"""Training augmentation: the same answers under the inputs people and clients send.

    from poppins.samples.augment import augment
    extra, counts = augment(sset, seed=1337, surface_forms=3)

Added to the training split only (never to validation), after the file's own samples, and
stored in the corpus bins, so the same file and seed give the same bytes.  Every draw comes
from a ``random.Random`` seeded with the run seed and the text it applies to, so a sample's
variants do not depend on the order of the others.  Four families:

* **system prompts**: each training sample is also seen with no system prompt, with the
  file's default one and with a generic one from :data:`GENERIC_SYSTEMS` (built-in, seeded;
  eval's client system prompts are different and held out).  A prompt whose answer differs
  under different system prompts in the file keeps its own system prompt only.
* **surface forms**: ``surface_forms`` variants of every training prompt (default
  :func:`auto_surface_forms`: more per prompt for a small file): case, punctuation,
  typos (dropped, doubled, swapped letters), contractions, filler, spacing, an aside (a
  sentence of context before or after), a synonym of a generic word (``_SYNONYMS``), a dropped
  function word, for a file with :data:`LEXICON_MIN_FORMS` forms or more a synonym of a common
  content word (the built-in lexicon, :mod:`poppins.samples.lexicon`: "kids" / "children"),
  and a keyword query (the prompt's content words in a generic frame, where one
  of them belongs to no other answer: :func:`keyword_forms`); and, besides them, one
  question about a detail of the answer per :data:`DETAIL_PER_SURFACE` surface forms, rounded
  down (:func:`detail_forms`: "wifi password?" for a wifi question whose answer names the
  password).  A variant equal
  to a validation prompt (or to one after case, spacing and punctuation are ignored) is never
  added.
* **conversations**: chains of 2..:data:`MAX_CHAIN_TURNS` single-turn training samples as one
  conversation (one per single-turn sample, at least :data:`CHAIN_MIN`, and with a renderer
  half as many again); with a renderer the first 1..n-1 turns are replayed as a client sends
  them back (``Sample.history``: the rendered answer as plain text, never learned) and the rest
  are learned, and each of the file's own conversations is also replayed that way from each
  later turn on (the file's conversations are never used as links).
* **off-topic**: where the file has a beyond-scope block, its refusal on generated off-topic
  prompts (:func:`off_topic_prompts`, built in; prompts that share a content word with a
  prompt of the file are left out), with no, the default or the block's system prompt only.
"""
from __future__ import annotations

import functools
import random
import re
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

MAX_CHAIN_TURNS = 4
#: The fewest synthetic conversations drawn (one per link above it; see augment()).
CHAIN_MIN = 100
#: Generated off-topic questions per file (where it has a beyond-scope block).
OFF_TOPIC_MIN, OFF_TOPIC_MAX = 20, 300

#: Generic system prompts seen in training: an optional introduction, a role and an optional
#: instruction, combined (about 1,700 of one to three sentences).  Eval's client system
#: prompts ("You are a helpful assistant." ...) are held out: none of them is among these,
#: and no role here says "helpful assistant".
_INTROS = ("", "", "", "You are Nova, made by a small team. ",
           "You are Atlas, created by a software company. ",
           "You are Sage, built by an open-source community. ",
           "You are Echo, an AI developed by a research lab. ",
           "This is a conversation between a user and an AI. ",
           "The following is a chat with a virtual assistant. ")
_ROLES = ("You are a knowledgeable guide.", "You are an expert tutor.",
          "You are a concise support agent.", "You are a patient teacher.",
          "You are a reliable reference assistant.", "You are a calm and precise helper.",
          "Act as a friendly advisor.", "You are a documentation bot.",
          "You are a kind, careful and clear assistant.", "You are a smart and honest AI.",
          "You are an AI model that answers questions.", "You are a chatbot.",
          "You are an assistant on a company website.", "You are a polite and useful AI.",
          "You are a large language model.", "The assistant answers the user's questions.",
          "You are an AI companion.", "You are a question-answering system.")
_RULES = ("", "", " Keep replies short.", " Be accurate.", " Answer in plain English.",
          " Reply clearly and politely.", " Use simple words.", " Think before you answer.",
          " Give detailed, correct answers.", " Be brief and friendly.",
          " If you do not know, say so.")
GENERIC_SYSTEMS: Tuple[str, ...] = tuple(dict.fromkeys(
    i + r + x for i in _INTROS for r in _ROLES for x in _RULES))

_CONTRACTIONS = (("what is", "what's"), ("how is", "how's"), ("it is", "it's"),
                 ("do not", "don't"), ("does not", "doesn't"), ("is not", "isn't"),
                 ("can not", "can't"), ("cannot", "can't"), ("i am", "i'm"),
                 ("where is", "where's"), ("who is", "who's"), ("that is", "that's"),
                 ("there is", "there's"), ("you are", "you're"), ("let us", "let's"))
#: Filler (eval's unseen families, greetings and thanks, are not among them).
_PREFIXES = ("please ", "can you tell me ", "could you tell me ", "quick question: ",
             "i'd like to know ", "tell me ", "so, ", "i wonder, ", "ok so ", "um, ",
             "question: ", "one more thing: ", "i need to know: ", "do you know ")
_SUFFIXES = (" please", ", please", " for me", " exactly", " again", " right now",
             " if you can", " in short", " briefly", ", quickly", " in a few words")
#: A sentence of context said before or after the question (never a greeting or thanks,
#: which are eval's families).
_ASIDES = ("I'm new to this.", "Just curious.", "Sorry if this is a basic question.",
           "Asking for a friend.", "I have a question.", "Quick one.", "I was wondering.",
           "Help me out here.", "I need to know.", "This is for a project.",
           "I forgot again.", "My friend asked me.", "Be honest.", "I looked everywhere.",
           "It's urgent.", "Short answer is fine.", "Sorry for asking.", "One question.")
#: Words and phrases said either way (generic English, no topic words): a prompt's first
#: match is replaced by another of its group.
_SYNONYMS = (("can i", "could i", "may i"), ("how do i", "how can i", "how should i"),
             ("how do you", "how can you", "how does one"), ("can you", "could you"),
             ("do you", "does the"), ("is there", "are there"), ("get", "obtain"),
             ("buy", "purchase"), ("start", "begin"), ("use", "utilize"), ("need", "require"),
             ("make", "create"), ("find", "locate"), ("fix", "repair"), ("big", "large"),
             ("small", "little"), ("fast", "quick"), ("help", "assist"), ("show", "display"),
             ("choose", "pick", "select"), ("stop", "end"), ("change", "modify"),
             ("explain", "describe"), ("tell me", "show me"), ("what", "which"),
             ("a", "the"), ("i", "we"), ("my", "our"), ("you", "u"), ("allowed", "permitted"),
             ("want", "wish"), ("keep", "hold"), ("open", "opened"), ("cost", "price"),
             ("many", "much"), ("long", "much time"), ("give", "provide"), ("about", "regarding"))
#: Words a deletion may drop (function words: the content words stay).
_STOPWORDS = frozenset(
    "a an the is are am was do does did can could may i you we my your our to of for in on at "
    "with and or it its this that there me please so just really".split())
_WORD = re.compile(r"[A-Za-z]{4,}")


def _key(text: str) -> str:
    """Case, spacing and punctuation ignored (what 'the same prompt' means for leaks)."""
    return " ".join(re.findall(r"\w+", text.casefold()))


# ------------------------------------------------------------------------- surface forms
def _case(p: str, r: random.Random) -> str:
    k = r.randrange(3)
    if k == 0:
        return p.lower()
    if k == 1:
        return p[:1].lower() + p[1:]
    return p.upper() if len(p) < 40 and r.random() < 0.3 else p.capitalize()


def _punct(p: str, r: random.Random) -> str:
    s = p.rstrip()
    if s and s[-1] in "?.!":
        return s[:-1] if r.random() < 0.7 else s + s[-1]
    return s + r.choice("?.")


def _typo(p: str, r: random.Random) -> str:
    words = [(m.start(), m.end()) for m in _WORD.finditer(p)]
    if not words:
        return p
    a, b = r.choice(words)
    w = p[a:b]
    i = r.randrange(1, len(w) - 1)
    k = r.randrange(3)
    if k == 0:
        w = w[:i] + w[i + 1:]                       # dropped
    elif k == 1:
        w = w[:i] + w[i] + w[i:]                    # doubled
    else:
        w = w[:i] + w[i + 1] + w[i] + w[i + 2:]     # swapped
    return p[:a] + w + p[b:]


def _contraction(p: str, r: random.Random) -> str:
    low = p.lower()
    pairs = [(a, b) for a, b in _CONTRACTIONS if re.search(rf"\b{re.escape(a)}\b", low)]
    pairs += [(b, a) for a, b in _CONTRACTIONS if re.search(rf"\b{re.escape(b)}\b", low)]
    if not pairs:
        return p
    a, b = r.choice(pairs)
    m = re.search(rf"\b{re.escape(a)}\b", low)
    rep = b if not p[m.start()].isupper() else b[:1].upper() + b[1:]
    return p[:m.start()] + rep + p[m.end():]


def _filler(p: str, r: random.Random) -> str:
    if r.random() < 0.6:
        return r.choice(_PREFIXES) + p[:1].lower() + p[1:]
    s = p.rstrip()
    end = s[-1] if s and s[-1] in "?.!" else ""
    return s[:len(s) - len(end)] + r.choice(_SUFFIXES) + end


def _spacing(p: str, r: random.Random) -> str:
    spaces = [i for i, c in enumerate(p) if c == " "]
    k = r.randrange(3)
    if k == 0 and spaces:
        i = r.choice(spaces)
        return p[:i] + "  " + p[i + 1:]
    if k == 1:
        return " " + p + " "
    s = p.rstrip()
    if s and s[-1] in "?.!" and s[-2:-1] != " ":
        return s[:-1] + " " + s[-1]
    return p + " "


def _aside(p: str, r: random.Random) -> str:
    a = r.choice(_ASIDES)
    return f"{a} {p}" if r.random() < 0.3 else f"{p.rstrip()} {a}"


def _synonym(p: str, r: random.Random) -> str:
    low = p.lower()
    hits = []
    for group in _SYNONYMS:
        for w in group:
            m = re.search(rf"\b{re.escape(w)}\b", low)
            if m:
                hits.append((m, w, group))
    if not hits:
        return p
    m, w, group = r.choice(hits)
    rep = r.choice([g for g in group if g != w])
    if m.start() == 0 and p[:1].isupper():
        rep = rep[:1].upper() + rep[1:]
    return p[:m.start()] + rep + p[m.end():]


@functools.lru_cache(maxsize=None)
def _lexicon_pattern() -> "re.Pattern":
    """One pattern for every lexicon entry (whole words, any case, any spacing between the
    words of a phrase; at each position the longest entry first)."""
    from .lexicon import lookup_index
    alts = "|".join(r"\s+".join(map(re.escape, w.split()))
                    for w in sorted(lookup_index(), key=lambda w: (-len(w), w)))
    return re.compile(rf"(?=\b({alts})\b)", re.IGNORECASE)


def _match_case(src: str, rep: str, p: str) -> str:
    """``rep`` in the case of ``src``, the text of ``p`` it replaces: all caps stays all caps
    (a one-letter ``src`` is judged by the whole of ``p``), a capital first letter stays."""
    letters = [c for c in (src if len(src) > 1 else p) if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return rep.upper()
    return rep[:1].upper() + rep[1:] if src[:1].isupper() else rep


def _lexicon(p: str, r: random.Random) -> str:
    """A content word or phrase of ``p`` (an entry of :mod:`poppins.samples.lexicon`)
    replaced by another of its group, longest matches first ("opening times", not
    "times"), in the case of the text it replaces."""
    from .lexicon import lookup_index
    index = lookup_index()
    found = []
    for m in _lexicon_pattern().finditer(p):
        w = " ".join(m.group(1).lower().split())
        if w in index:   # not always: IGNORECASE also matches "ſ" (long s) for "s"
            found.append((m.start(1), m.end(1), w))
    hits: List[Tuple[int, int, str]] = []
    for a, b, w in sorted(found, key=lambda h: (h[0] - h[1], h[0])):   # longest first
        if all(b <= x or a >= y for x, y, _ in hits):
            hits.append((a, b, w))
    if not hits:
        return p
    a, b, w = r.choice(sorted(hits))
    rep = r.choice([g for g in index[w] if g != w])
    return p[:a] + _match_case(p[a:b], rep, p) + p[b:]


def _deletion(p: str, r: random.Random) -> str:
    words = list(re.finditer(r"[A-Za-z']+", p))
    spots = [m for m in words if m.group().lower() in _STOPWORDS]
    if len(words) < 3 or not spots:
        return p
    m = r.choice(spots)
    out = (p[:m.start()] + p[m.end():].lstrip(" ")).lstrip()
    return out[:1].upper() + out[1:] if p[:1].isupper() else out


#: The training surface families (eval's unseen variants use others).
FAMILIES = {"case": _case, "punctuation": _punct, "typo": _typo, "contraction": _contraction,
            "filler": _filler, "spacing": _spacing, "aside": _aside, "synonym": _synonym,
            "deletion": _deletion, "lexicon": _lexicon}
#: How often each family is drawn (1 if not named): a sentence said before or after the
#: question is what users add most, and typos break a word's tokens the most.
FAMILY_WEIGHTS = {"aside": 3, "typo": 2, "lexicon": 3}
#: The lexicon family (content words: "kids" / "children") only for a file with this many
#: surface forms per prompt or more: a small file, whose few wordings are all a model sees
#: (tests/data/eval/small, 12 forms, seeds 1-3, weight 3: paraphrases 50 -> 58%, validation
#: 62 -> 67%, wrongly refused 8.7 -> 6.4%, off-topic refused 84 -> 89%; weight 1: paraphrases
#: 52%); with 3 forms per prompt it replaces a third of a prompt's wordings, and the built-in
#: example (3 forms) was no longer learned within its plan (368/370 answers, default seed).
LEXICON_MIN_FORMS = 6


def surface_families(n: int) -> List[str]:
    """The families drawn for ``n`` surface forms per prompt, sorted (lexicon from
    :data:`LEXICON_MIN_FORMS` on)."""
    return sorted(f for f in FAMILIES if f != "lexicon" or n >= LEXICON_MIN_FORMS)


def surface_variants(prompt: str, n: int, seed: int) -> List[str]:
    """Up to ``n`` distinct variants of ``prompt`` (each one or two families), seeded."""
    out: List[str] = []
    names = surface_families(n)
    weights = [FAMILY_WEIGHTS.get(f, 1) for f in names]
    for k in range(4 * n):
        if len(out) >= n:
            break
        r = random.Random(f"poppins-surface:{seed}:{k}:{prompt}")
        v = prompt
        picked = r.choices(names, weights, k=r.choice((1, 1, 2)))
        for fam in dict.fromkeys(picked):
            v = FAMILIES[fam](v, r)
        if v.strip() and v != prompt and v not in out:
            out.append(v)
    return out


#: Frames of a keyword form: the prompt said as a search query, its content words only.
_KEY_FRAMES = ("{k}?", "{k}", "about {k}", "what about {k}?", "{k}: what do you know?",
               "info on {k}", "question about {k}", "{k}, tell me")
_QUESTION_WORDS = frozenset("what which who whom whose when where why how does did has have "
                            "had will would should shall tell explain define mean means "
                            "about".split())


def content_words(text: str) -> List[str]:
    """The words of ``text`` (3+ characters) that are neither function nor question words."""
    return [w for w in re.findall(r"[a-z0-9](?:[a-z0-9'.-]*[a-z0-9])?", text.casefold())
            if len(w) > 2 and w not in _STOPWORDS and w not in _QUESTION_WORDS]


def _answer(s) -> Tuple:
    """What 'the same answer' means for the word-ownership rules below."""
    return (s.items, s.thought)


def _owners(samples: Sequence, words_of: Callable) -> Dict[str, set]:
    """For each word ``words_of(sample)`` yields, the answers (:func:`_answer`) of the samples
    that use it."""
    owners: Dict[str, set] = defaultdict(set)
    for s in samples:
        for w in words_of(s):
            owners[w].add(_answer(s))
    return owners


def keyword_forms(samples: Sequence, seed: int) -> Dict[str, str]:
    """For each prompt of ``samples`` with a content word that no prompt with another answer
    uses, its keyword form: its content words in order, in a generic frame."""
    owners = _owners(samples, lambda s: content_words(s.prompt))
    out = {}
    for s in samples:
        words = list(dict.fromkeys(content_words(s.prompt)))
        if any(owners[w] == {_answer(s)} for w in words):
            r = random.Random(f"poppins-keyword:{seed}:{s.prompt}")
            out[s.prompt] = r.choice(_KEY_FRAMES).format(k=" ".join(words))
    return out


#: Frames of an answer-detail question: a content word of the prompt with one of its answer.
_DETAIL_FRAMES = ("{k}?", "what is the {k}?", "what about the {k}?", "and the {k}?",
                  "tell me about the {k}", "is there a {k}?", "{k}, how does that work?",
                  "what are the {k} details?")


#: Common words that say nothing about an answer's detail (besides _STOPWORDS).
_COMMON = frozenset(
    "also only more most some any each other than then into onto over under after before "
    "again back even here just like made make many much must need such take very well will "
    "your yours their them they these those were been being have from but unless until every "
    "never always someone everyone anyone nothing something everything lives good help "
    "number same both either through neither without within while where when which whose what "
    "yes not cannot can't don't won't isn't".split())


def answer_text(s) -> str:
    """The text items of a sample's (first) answer, joined (no sources or code)."""
    return " ".join(i.text for i in s.items if i.kind == "text")


def _stem(word: str) -> str:
    """A crude English stem, so that 'opening' meets 'open' and 'books' meets 'book'."""
    w = word.casefold()
    for suffix in ("ings", "ing", "ed", "es", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            return w[: len(w) - len(suffix)]
    return w


def detail_forms(samples: Sequence, n: int, seed: int) -> Dict[str, List[str]]:
    """Up to ``n`` questions per prompt about a detail of its answer (people ask about what an
    answer says: "wifi password?" for "Is there free wifi?" answered "... no password"): a
    content word of the prompt with a content word of the answer that no sample with another
    answer uses (prompt or answer), in a generic frame."""
    owners = _owners(samples, lambda s: map(_stem, content_words(s.prompt)
                                            + content_words(answer_text(s))))
    out: Dict[str, List[str]] = {}
    for s in samples:
        own = {_answer(s)}
        pw = list(dict.fromkeys(content_words(s.prompt)))
        stems = {_stem(w) for w in pw}
        aw = [w for w in dict.fromkeys(content_words(answer_text(s)))
              if owners[_stem(w)] == own and _stem(w) not in stems and len(w) > 3
              and w not in _COMMON and not any(c.isdigit() for c in w)]
        if not pw or not aw or n <= 0:
            continue
        fewest = min(len(owners[_stem(w)]) for w in pw)   # the prompt's most telling words
        topic = [w for w in pw if len(owners[_stem(w)]) == fewest]
        r = random.Random(f"poppins-detail:{seed}:{s.prompt}")
        out[s.prompt] = [r.choice(_DETAIL_FRAMES).format(k=f"{r.choice(topic)} {a}")
                         for a in r.sample(aw, min(n, len(aw)))]
    return out


# ------------------------------------------------------------------------- off-topic
_OFF_TEMPLATES = (
    "Who won the {event} last year?", "What's the weather like in {city} today?",
    "Can you recommend a good {media}?", "How do I get from the airport to {city} center?",
    "Write a short poem about {thing}.", "Tell me a joke about {thing}.",
    "What is the capital of {country}?", "When was {landmark} built?", "What do {animal} eat?", "How long do {animal} live?",
    "Translate 'good morning' into {language}.", "What time is it in {city} right now?",
    "Who is the most famous {person} of all time?", "Plan a weekend trip to {city} for me.",
    "What should I name my new {pet}?", "Is {thing} better than {thing2}?",
    "How many people live in {country}?", "Which {media} won the most awards?",
    "Give me a workout plan for {day}.", "What's a good gift for my {relative}?",
    "Summarize the plot of a famous {media}.", "What are the rules of {game}?",
    "Who is the president of {country}?", "How do I cook {food}?", "What's the score of the "
    "{game} match?", "Can you sing a song about {thing}?", "Where can I buy {food}?",
    "What is the best {media} this year?", "What's the history of {landmark}?", "Do you like {thing2}?", "Tell me about {person}s.",
    "What happened in {country} yesterday?", "How far is {city} from {city2}?",
    # other forms: commands, yes/no questions, opinions, personal requests, no question mark
    "Book me a table for two in {city}.", "Should I buy {product} or wait?",
    "Which {product} is the cheapest right now?", "Is it safe to swim with {animal}?",
    "I have a headache, what should I take?", "How often should I water {plant}?", "What's the best time to plant {plant}?",
    "Who invented the {invention}?", "When did the {invention} become popular?",
    "Why is the sky orange at sunset in {city}?", "What's your favourite {media}?",
    "Tell me something interesting about {country}", "how old is {landmark}",
    "recommend a {media} for tonight", "Are {animal} good pets?",
    "What is the exchange rate between the {currency} and the euro?",
    "Should I invest in {product} stocks?", "Can you help me write a birthday card for my "
    "{relative}?", "What should I wear to a wedding in {city}?", "Who sang the song about "
    "{thing}?", "How many goals did the {team} score last season?",
    "Which team will win the {event} this year?", "What are the opening hours of the museum "
    "in {city}?", "How do I get rid of {pest} in my kitchen?", "Is {food} healthy?",
    "Can I bring my {pet} on a plane?",
    "Describe a sunset over {landmark}.", "Give me three fun facts about {animal}.",
    "What do you think about {thing2}?", "Where should I go on holiday in {country}?",
    "Which yarn is best for a {clothing}?", "Which {clothing} is in fashion this winter?",
    "What is the tallest building in {city}?", "Who was the first king of {country}?",
    "Can you play {game} with me?",
    "How do you say 'thank you' in {language}?", "Is it going to snow in {city} next week?",
    # health, home, hobbies, money, nature, people, feelings, advice
    "How do I stop {habit}?",
    "What is a good exercise for my {bodypart}?", "My {bodypart} hurts, is that bad?",
    "How do I make {dish} from scratch?", "What temperature should I bake {dish} at?",
    "Teach me how to {hobby}.", "Is {hobby} hard to learn?",
    "What do I need to start {hobby}?", "How often should I service my {vehicle}?", "Why does my {vehicle} make a noise?",
    "Why is {planet} that color?", "How deep is the {sea}?", "Which fish live in the {sea}?",
    "Has anyone climbed {mountain} without oxygen?",
    "When is the next {sport} world championship?", "How old is the {celebrity}?",
    "Is the {celebrity} married?", "Write a song for my {relative}'s birthday.",
    "Compose a haiku about {thing}.", "Give me a recipe with {ingredient}.",
    "Can I freeze {ingredient}?", "How do I keep {ingredient} fresh?",
    "I feel sad today, can you cheer me up?", "How do I ask my {relative} for money?",
    "Should I quit my job as a {job}?", "How much does a {job} earn?",
    "What is the best age to retire?", "Can you pick lottery numbers for me?",
    "Which horse will win the race on {day}?", "What's my horoscope for {day}?",
    "Do you dream at night?", "What is your favourite color?", "Are you a real person?",
    "Where do you live?", "What did you eat for breakfast?", "Can you call my {relative}?",
    "Order a pizza with {ingredient} for me.", "Remind me to buy {ingredient} tomorrow.",
    "what's the news today", "tell me a bedtime story", "who will win the election",
    "is it going to rain", "cheap flights to {city}", "best hotels in {city}",
    "Is {celebrity} coming to {city}?", "What should I name my {vehicle}?",
    "How long does it take to walk to {city}?", "Is {illness} contagious?", "How do I treat {illness} at home?",
    "How do I decorate my {room}?", "What color should I paint my {room}?",
    "How do I clean a {household}?", "Why is my {plant} dying?",
)
_FILL = {
    "event": ("marathon", "chess championship", "song contest", "cycling tour", "regatta"),
    "city": ("Lisbon", "Nairobi", "Osaka", "Montreal", "Lima", "Oslo", "Hanoi", "Zagreb"),
    "media": ("novel", "podcast", "sitcom", "board game", "thriller", "cookbook"),
    "thing": ("penguins", "autumn leaves", "umbrellas", "lighthouses", "bicycles", "the moon"),
    "thing2": ("tea", "chocolate", "skiing", "camping", "gardening"),
    "country": ("Peru", "Norway", "Kenya", "Vietnam", "Croatia", "Chile", "Mongolia"),
    "landmark": ("the Eiffel Tower", "Mount Kilimanjaro", "the Colosseum", "Big Ben"),
    "animal": ("giraffes", "koalas", "hamsters", "dolphins", "owls", "tortoises"),
    "language": ("Swahili", "Finnish", "Portuguese", "Korean", "Dutch"),
    "person": ("painter", "sculptor", "tenor", "chef", "explorer"),
    "pet": ("kitten", "puppy", "parrot", "goldfish", "rabbit"),
    "day": ("Monday", "the weekend", "a rainy afternoon"),
    "relative": ("grandmother", "uncle", "cousin", "sister"),
    "food": ("risotto", "pancakes", "sushi", "lasagna", "dumplings"),
    "city2": ("Berlin", "Cairo", "Denver", "Madrid", "Seoul"),
    "game": ("badminton", "backgammon", "curling", "mahjong", "water polo"),
    "product": ("a new phone", "an electric car", "a smartwatch", "a coffee machine",
                "a gold ring"),
    "household": ("tap", "roof", "washing machine", "fridge door"),
    "plant": ("roses", "basil", "orchids", "cactus plants", "sunflowers"),
    "invention": ("telephone", "bicycle", "light bulb", "printing press", "zipper"),
    "currency": ("dollar", "yen", "rupee", "peso", "pound"),
    "team": ("Lisbon Lions", "Osaka Hawks", "Denver Bears", "Madrid Comets"),
    "pest": ("ants", "mice", "fruit flies", "cockroaches"),
    "clothing": ("scarf", "sweater", "hat", "pair of socks", "skirt", "jacket"),
    "habit": ("snoring", "biting my nails", "eating sugar", "procrastinating"),
    "bodypart": ("back", "knee", "shoulder", "neck", "ankle"),
    "dish": ("croissants", "a carrot cake", "bagels", "meatballs", "apple pie"),
    "hobby": ("juggle", "play the ukulele", "paint with watercolors", "surf", "crochet",
              "do pottery", "ski"),
    "vehicle": ("motorbike", "pickup truck", "scooter", "camper van", "sports car"),
    "planet": ("Mars", "Jupiter", "Saturn", "Venus", "Neptune"),
    "sea": ("Baltic Sea", "Red Sea", "Pacific Ocean", "Dead Sea"),
    "mountain": ("Mont Blanc", "Denali", "K2", "Aconcagua", "Mount Fuji"),
    "sport": ("tennis", "rugby", "golf", "volleyball", "ice hockey", "basketball"),
    "celebrity": ("famous actor", "pop singer", "star footballer", "royal prince"),
    "ingredient": ("mushrooms", "spinach", "salmon", "avocado", "ginger", "cheese"),
    "job": ("nurse", "pilot", "plumber", "lawyer", "baker"),
    "illness": ("chickenpox", "a cold", "hay fever", "migraine"),
    "room": ("bedroom", "living room", "bathroom", "kitchen"),
}


def off_topic_prompts(n: int, seed: int, avoid: Iterable[str] = ()) -> List[str]:
    """``n`` (at most) distinct generated off-topic questions; a question whose subject has a
    word (4+ letters) from ``avoid`` is left out (it may be in the file's scope)."""
    avoid = {w.casefold() for w in avoid}
    r = random.Random(f"poppins-offtopic:{seed}")
    out, seen = [], set()
    for _ in range(40 * n + 200):
        if len(out) >= n:
            break
        t = r.choice(_OFF_TEMPLATES)
        fills: List[str] = []

        def fill(m):
            fills.append(r.choice(_FILL[m.group(1)]))
            return fills[-1]
        q = re.sub(r"\{(\w+)\}", fill, t)
        if q in seen:
            continue
        seen.add(q)
        if any(w.casefold() in avoid for f in fills for w in _WORD.findall(f)):
            continue
        out.append(q)
    return out


# ------------------------------------------------------------------------- the whole set
def system_dependent_prompts(samples: Sequence) -> set:
    """Keys of the prompts whose answer differs under different system prompts in the file."""
    answers = defaultdict(set)
    for s in samples:
        answers[_key(s.prompt)].add((s.system, s.items, s.thought, s.turns))
    out = set()
    for k, a in answers.items():
        if len({(x[1], x[2], x[3]) for x in a}) > 1 and len({x[0] for x in a}) > 1:
            out.add(k)
    return out


#: The default amount of surface forms scales with the file: a small file gets more variants
#: per prompt (about SURFACE_TARGET_ROWS prompts in all), a large one SURFACE_MIN.  Measured
#: on tests/data/eval/small (51 training samples, mean of 3 seeds): 3 per prompt gave 52%
#: validation / 30% paraphrases / 13% wrongly refused, 12 per prompt 67% / 45% / 9%.
SURFACE_TARGET_ROWS = 600
#: One answer-detail question (detail_forms) per this many surface forms, rounded down: a
#: small file gets them (tests/data/eval/small, 12 forms, three seeds: validation 52 -> 86%,
#: wrongly refused 11 -> 7%); on the built-in example (3 forms) one per prompt gave unseen
#: surface variants 84 -> 90% and off-topic refused 76 -> 74%, but left the file unlearned
#: in the 1,414 planned steps (368/370 answers; without them learned at step 1,150).
DETAIL_PER_SURFACE = 6
SURFACE_MIN, SURFACE_MAX = 3, 24


def auto_surface_forms(train_samples: int) -> int:
    """Surface forms per training prompt when neither a flag nor ``<surface-forms>`` sets it:
    ceil(SURFACE_TARGET_ROWS / train_samples), clamped to [SURFACE_MIN, SURFACE_MAX]."""
    n = -(-SURFACE_TARGET_ROWS // max(1, int(train_samples)))
    return max(SURFACE_MIN, min(SURFACE_MAX, n))


def augment(sset, seed: int, surface_forms: Optional[int] = None,
            beyond: Optional[Sequence] = None,
            render: Optional[Callable] = None) -> Tuple[List, Dict[str, int]]:
    """The augmented training samples of ``sset`` (a SampleSet) and their counts by family.
    ``beyond``: the file's beyond-scope samples (their refusal is taught on generated
    off-topic prompts); None to take them from ``sset`` (samples whose origin is the block).
    ``render(items, thought) -> str``: an answer's rendered text (what a client shows and
    sends back: ``poppins.engine.render.render_answer``); with it, conversations replay
    their earlier turns as a client does (``Sample.history``), without it every turn is a
    learned turn."""
    from . import Sample, Turn
    if surface_forms is None:
        surface_forms = auto_surface_forms(len(sset.train))
    everything = [s for g in sset.groups for s in g]
    dependent = system_dependent_prompts(everything)
    val_exact = {s.prompt for s in sset.val}
    val_keys = {_key(s.prompt) for s in sset.val}
    default = sset.default_system
    counts = {"system": 0, "surface": 0, "chains": 0, "off_topic": 0}
    out: List = []

    def generic(text: str, k: int = 0) -> str:
        return random.Random(f"poppins-system:{seed}:{k}:{text}").choice(GENERIC_SYSTEMS)

    def copy(s, **kw):
        d = dict(prompt=s.prompt, items=s.items, system=s.system, thought=s.thought,
                 origin=s.origin, variant="", turns=s.turns, history=s.history)
        d.update(kw)
        return Sample(**d)

    keywords = keyword_forms(everything, seed)
    if beyond is None:   # the beyond-scope groups come last (poppins.samples)
        beyond = [g[0] for g in sset.groups[len(sset.groups) - sset.beyond_scope:]] \
            if sset.beyond_scope else []
    refusals = {_answer(b) for b in beyond}
    in_scope_all = [s for s in everything if _answer(s) not in refusals]
    details = detail_forms(in_scope_all, surface_forms // DETAIL_PER_SURFACE, seed)
    other_keys = {_key(s.prompt) for s in everything}
    for s in sset.train:
        free = _key(s.prompt) not in dependent
        systems = [None, default, generic(s.prompt)] if free else [s.system]
        seen = {s.system}
        for sy in systems:
            if sy not in seen:
                seen.add(sy)
                out.append(copy(s, system=sy, variant="augment:system"))
                counts["system"] += 1
        if surface_forms:
            own_key = _key(s.prompt)
            forms = surface_variants(s.prompt, surface_forms, seed)
            kf = keywords.get(s.prompt) if not s.turns and free else None
            if kf and _key(kf) not in other_keys:
                forms[-1:] = [kf]
            if free and not s.turns:
                forms += [d for d in details.get(s.prompt, ()) if _key(d) not in other_keys]
            for k, v in enumerate(forms):
                if v in val_exact or (_key(v) in val_keys and _key(v) != own_key):
                    continue   # never a validation prompt in training
                choices = [s.system, None, default, generic(s.prompt, k + 1),
                           generic(s.prompt, k + 101)] if free else [s.system]
                sy = random.Random(f"poppins-surface-system:{seed}:{k}:{s.prompt}") \
                    .choice(choices)
                out.append(copy(s, prompt=v, system=sy, variant="augment:surface"))
                counts["surface"] += 1

    links = [s for s in sset.train if not s.turns and _key(s.prompt) not in dependent]
    if len(links) >= 2:
        r = random.Random(f"poppins-chains:{seed}")
        # with a renderer: n chains whose first 1..n-1 turns are replayed as a client sends
        # them back, and half as many with every turn learned (fewer of those left chains
        # unlearned, more did not help); without one, n learned chains.  n is one per link,
        # at least CHAIN_MIN (a small file: tests/data/eval/small, three seeds, chains of
        # turns 2..4 answered 81% with one per link, 95% with 100)
        n = max(len(links), CHAIN_MIN)
        learned = n // 2 if render else n
        for k in range(learned + (n if render else 0)):
            chain = r.sample(links, min(len(links), r.randint(2, MAX_CHAIN_TURNS)))
            sy = r.choice([None, default, default, r.choice(GENERIC_SYSTEMS)])
            h = r.randint(1, len(chain) - 1) if k >= learned else 0
            history = tuple((c.prompt, render(c.items, c.thought)) for c in chain[:h])
            first, rest = chain[h], chain[h + 1:]
            out.append(copy(first, system=sy, origin=first.origin, history=history,
                            variant="augment:conversation",
                            turns=tuple(Turn(c.prompt, c.items, c.thought) for c in rest)))
            counts["chains"] += 1
    if render:
        # the file's own conversations as a client continues them: turns 1..j replayed, the
        # rest learned (a follow-up that needs its history still gets its trained answer)
        for s in sset.train:
            turns = [Turn(s.prompt, s.items, s.thought)] + list(s.turns)
            for j in range(1, len(turns)):
                history = tuple((t.prompt, render(t.items, t.thought)) for t in turns[:j])
                out.append(copy(s, prompt=turns[j].prompt, items=turns[j].items,
                                thought=turns[j].thought, turns=tuple(turns[j + 1:]),
                                history=history, variant="augment:conversation"))
                counts["chains"] += 1

    if beyond:
        b = beyond[0]
        words = set()
        for s in everything:
            if s in beyond:
                continue
            words.update(_WORD.findall(s.prompt))
        # about two off-topic questions per three in-scope training samples (between
        # OFF_TOPIC_MIN and OFF_TOPIC_MAX; each in-scope sample is also seen 4-6 more times
        # in the other families), so the refusal never outweighs a small file
        in_scope = len([s for s in sset.train if s not in set(beyond)])
        n = min(OFF_TOPIC_MAX, max(OFF_TOPIC_MIN, 2 * in_scope // 3))
        for q in off_topic_prompts(n, seed, avoid=words):
            if q in val_exact:
                continue
            # never a generic system prompt here: a refusal under unseen system prompts
            # teaches "an unknown system prompt means refuse" (clients' prompts then fail)
            sy = random.Random(f"poppins-offtopic-system:{seed}:{q}").choice(
                [b.system, None, default])
            out.append(copy(b, prompt=q, system=sy, turns=(), variant="augment:off-topic"))
            counts["off_topic"] += 1
    return out, counts
