"""Which keys the store's scripts and reads name, built from the Redis
layout of services/contracts.py (docs/architecture.md, Redis layout).

Every key of bucket N carries the hash tag ``{bN}``, so that on a Redis
Cluster a call that names the keys of one bucket runs on one node."""
import functools

from services import contracts, rankings

# a post's hash: its counts and its creation time (seconds since the epoch);
# posts counted before the time moved here have it in contracts.created_key
POST_FIELDS = ("upvote", "downvote", "createdAt")


@functools.lru_cache(maxsize=contracts.MAX_BUCKETS)
def ranking_keys(bucket):
    """The bucket's rankings, in the order of rankings.SORTS (top first),
    then its creation times: the keys the apply and rebuild scripts name
    for a bucket, in the order rankings.lua reads them."""
    return tuple(contracts.rank_key(bucket, sort) for sort in rankings.SORTS) + (
        contracts.created_key(bucket),)


def post_key(bucket, post_id):
    """The key of a post's counts, in its bucket."""
    return contracts.post_keys(bucket, post_id)[0]


def set_created_keys(bucket, post_id):
    """The set_created script's keys: the post, its hot ranking, the
    bucket's creation times."""
    return (post_key(bucket, post_id), contracts.rank_key(bucket, rankings.HOT),
            contracts.created_key(bucket))


def rebuild_keys(bucket, post_id):
    """The rebuild script's keys: the post, its rankings, the bucket's
    creation times."""
    return (post_key(bucket, post_id),) + ranking_keys(bucket)


def applied_keys(event_id, post_ids, buckets):
    """The exactly-once marks of an event's parts (one per bucket its posts
    are in), sorted."""
    return sorted({contracts.applied_key(contracts.bucket_of(post_id, buckets), event_id)
                   for post_id in post_ids})
