"""The Streamlit annotation app: paint masks, train heads, review synthetic labels."""
