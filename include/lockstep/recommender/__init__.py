"""The recommender system: users and items instead of queries and documents (issue 12).

Modules, each one concept:

- ``movielens``: the demo data, MovieLens-100k from the pinned ``recbole==1.2.1`` wheel;
- ``factorization``: a model version, one ALS fit (``ALSRecommender``): user and item
  embeddings, id maps, fingerprint, one checksummed ``.npz`` file;
- ``fold_in``: the online model, a new or changed user's (or item's) vector from its
  interactions given the other side's factors (``FoldIn``);
- ``item_index``: a version's items in FAISS and ``recommend`` (``ItemIndex``);
- ``live_version``: what serving holds per version, the user-vector store and the item
  index paired (``LiveVersion``);
- ``evaluation``: time split, recall@10 / nDCG@10, popularity baseline, paired bootstrap;
- ``registration``: a fit registered in MLflow (through ``lockstep.model.recommender_model``)
  and loaded back;
- ``interactions_file``: users' own interaction files.

How serving uses it: once per process ``live_version.single_thread_blas()`` (fold-in's
tail latency), then per live version::

    model, info = registration.load_version(version)          # sha256 + fingerprint checked
    live = LiveVersion(model, info.version)                   # user store + item index
    live.recommend(user_id, k, exclude=seen_item_ids)         # UnknownIdError -> 404
    live.fold_in_user(user_id, *store.interactions_of(user_id))  # POST /interactions, every live version
    live.fold_in_item(item_id, user_ids, values)              # a new item after its first interactions

Nothing is imported here, so importing one module does not load FAISS or implicit.
"""
