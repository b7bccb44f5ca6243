"""微信客服 (WeChat customer service): the channel that pulls what WeCom's kf_msg_or_event callbacks
announce, stores it in the same timeline as every other channel, and answers through kf/send_msg.

- `items`: a pulled sync_msg item as what it stores and what it changes (store.kf.Pulled);
- `pull`: one pull loop per kf account, with the cursor saved with each page (KfPuller);
- `send`: kf/send_msg and send_msg_on_event under WeCom's reply window (KfSender);
- `channel`: what happens to new items (live, rules, the welcome code) and the console's session
  control, recall and customer names (KfChannel).
Facts: wecom-kf.md; protocol: wecomd.wecom.kf.
"""
