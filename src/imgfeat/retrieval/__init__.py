"""Using the features: a FAISS index, search by image or id, near-duplicate groups, reviews,
the HTML report. Needs the search extra (faiss-cpu, pandas): pip install 'imgfeat[search]'.

    index.py        FeatureIndex (faiss_kinds.py: flat/hnsw/ivf/ivfpq; id_table.py; index_files.py)
    sharded.py      ShardedIndex: parts built one at a time, searched together; open_index
    search.py       query images -> the same Features stage -> index.search -> DataFrame
    dedup.py        range search -> pairs -> connected components -> groups
    buckets.py      the engine-free steps of distributed dedup: k-means buckets, exact join per bucket
    dedup_spark.py, dedup_ray.py   the same groups on Spark / Ray (dedup --engine)
    reviews.py      reviewers' "not duplicate" verdicts (reviews.jsonl)
    report.py       the HTML report of groups
"""
