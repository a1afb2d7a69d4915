from promptflow.core import tool


@tool
def prepare_examples():
    return [
        {
            "url": "https://play.google.com/store/apps/details?id=com.spotify.music",
            "text_content": "Spotify is a free music and podcast streaming app with millions of songs, albums, and "
            "original podcasts.",
            "category": "App",
            "evidence": "Both",
        },
        {
            "url": "https://www.imdb.com/title/tt0111161/",
            "text_content": "The Shawshank Redemption: Directed by Frank Darabont.",
            "category": "Movie",
            "evidence": "Both",
        },
    ]
