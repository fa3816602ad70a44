"""What the dashboard keeps per user, without Streamlit: workspaces, datasets, uploads, model choice, loaded vectors."""
