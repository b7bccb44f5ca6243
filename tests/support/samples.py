"""Decrypted callback plaintexts for every message and event type of wecom-protocol.md §5–§6.

Keys: the MsgType for ordinary messages (`text`), `event:<Event>` for events
(`event:LOCATION`), `change_contact:<ChangeType>` for contact changes. Values mix CDATA and
bare text and vary their whitespace, as WeCom does.
"""

CORP_ID = "ww0123456789abcdef"
AGENT_ID = "1000002"


def _message(msgtype, body, sender="zhangsan", create_time="1764370000"):
    return (
        "<xml><ToUserName><![CDATA[%s]]></ToUserName>"
        "<FromUserName><![CDATA[%s]]></FromUserName>"
        "<CreateTime>%s</CreateTime><MsgType><![CDATA[%s]]></MsgType>%s"
        "<AgentID>%s</AgentID></xml>" % (CORP_ID, sender, create_time, msgtype, body, AGENT_ID)
    )


def _event(event, body="", sender="zhangsan", create_time="1764370000", agent=True):
    agent_xml = "\n<AgentID>%s</AgentID>" % AGENT_ID if agent else ""
    return (
        "<xml>\n<ToUserName><![CDATA[%s]]></ToUserName>\n"
        "<FromUserName><![CDATA[%s]]></FromUserName>\n"
        "<CreateTime>%s</CreateTime>\n<MsgType><![CDATA[event]]></MsgType>\n"
        "<Event><![CDATA[%s]]></Event>%s%s\n</xml>"
        % (CORP_ID, sender, create_time, event, body, agent_xml)
    )


def _contact(change_type, body):
    return _event("change_contact", "\n<ChangeType>%s</ChangeType>%s" % (change_type, body),
                  sender="sys", agent=False)


SAMPLES = {
    # ---- ordinary messages (§5)
    "text": _message("text", "<Content><![CDATA[部署一下 staging，谢谢 🙏]]></Content>"
                             "<MsgId>7304918230194725121</MsgId>"),
    "image": _message("image", "<PicUrl><![CDATA[https://wework.qpic.cn/wwpic/48213_aBcD/0]]></PicUrl>"
                               "<MediaId><![CDATA[2-G6nrLmr5EC3MMb_-zK1dDdzmd0p7cNliYu9V5w7o8K0]]></MediaId>"
                               "<MsgId>7304918230194725122</MsgId>"),
    "voice": _message("voice", "<MediaId><![CDATA[1ZfqTUkYg3hH5c0wVv1g9mB3q4Rqy]]></MediaId>"
                               "<Format><![CDATA[amr]]></Format><MsgId>7304918230194725123</MsgId>"),
    "video": _message("video", "<MediaId><![CDATA[3Vd7bq0Lm2kHh8uYcZp]]></MediaId>"
                               "<ThumbMediaId><![CDATA[3Th9sPq2]]></ThumbMediaId>"
                               "<MsgId>7304918230194725124</MsgId>"),
    "location": _message("location", "<Location_X>31.230416</Location_X><Location_Y>121.473701</Location_Y>"
                                     "<Scale>15</Scale><Label><![CDATA[上海市黄浦区人民广场]]></Label>"
                                     "<MsgId>7304918230194725125</MsgId><AppType><![CDATA[wxwork]]></AppType>"),
    "link": _message("link", "<Title><![CDATA[季度报告]]></Title><Description><![CDATA[Q3 summary]]></Description>"
                             "<Url><![CDATA[https://example.com/report?q=3&lang=zh]]></Url>"
                             "<PicUrl><![CDATA[https://example.com/cover.png]]></PicUrl>"
                             "<MsgId>7304918230194725126</MsgId>"),
    "file": _message("file", "<MediaId><![CDATA[2jf93Ka0cQ]]></MediaId>"
                             "<FileName><![CDATA[报价单 v2.xlsx]]></FileName>"
                             "<MsgId>7304918230194725127</MsgId>"),
    "unknown_msgtype": _message("hologram", "<Projection><Angle>45</Angle><Color>teal</Color></Projection>"
                                           "<MsgId>7304918230194725128</MsgId>"),
    # ---- member and app events (§6)
    "event:subscribe": _event("subscribe", "\n<EventKey><![CDATA[]]></EventKey>"),
    "event:unsubscribe": _event("unsubscribe"),
    "event:enter_agent": _event("enter_agent", "\n<EventKey><![CDATA[]]></EventKey>"),
    "event:LOCATION": _event("LOCATION", "\n<Latitude>31.230416</Latitude>\n<Longitude>121.473701</Longitude>"
                                         "\n<Precision>30.000000</Precision>\n<AppType><![CDATA[wxwork]]></AppType>"),
    "event:batch_job_result": _event(
        "batch_job_result",
        "\n<BatchJob><JobId><![CDATA[S0MrnndvRG5fadSlLwiBqiDDbM143UqTmKP3152FZk4]]></JobId>"
        "<JobType><![CDATA[sync_user]]></JobType><ErrCode>0</ErrCode><ErrMsg><![CDATA[ok]]></ErrMsg></BatchJob>",
        sender="sys", agent=False),
    # ---- change_contact (§6); ChangeType bare here, CDATA elsewhere
    "change_contact:create_user": _contact("create_user", """
<UserID><![CDATA[lisi]]></UserID>
<Name><![CDATA[李四]]></Name>
<Department><![CDATA[1,2,3]]></Department>
<MainDepartment>1</MainDepartment>
<IsLeaderInDept><![CDATA[1,0,0]]></IsLeaderInDept>
<Position><![CDATA[产品经理]]></Position>
<Mobile>13800000000</Mobile>
<Gender>1</Gender>
<Email><![CDATA[lisi@example.com]]></Email>
<Status>1</Status>
<Avatar><![CDATA[https://wework.qpic.cn/wwhead/avatar/0]]></Avatar>
<Alias><![CDATA[小李]]></Alias>
<Telephone><![CDATA[021-12345678]]></Telephone>
<Address><![CDATA[上海市徐汇区]]></Address>
<ExtAttr>
    <Item><Name><![CDATA[爱好]]></Name><Type>0</Type><Text><Value><![CDATA[旅游]]></Value></Text></Item>
    <Item><Name><![CDATA[主页]]></Name><Type>1</Type><Web><Title><![CDATA[企业微信]]></Title><Url><![CDATA[https://work.weixin.qq.com]]></Url></Web></Item>
</ExtAttr>"""),
    "change_contact:update_user": _contact("update_user", """
<UserID><![CDATA[lisi]]></UserID>
<NewUserID><![CDATA[lisi2]]></NewUserID>
<Position><![CDATA[产品总监]]></Position>
<ExtAttr>
    <Item><Name><![CDATA[爱好]]></Name><Type>0</Type><Text><Value><![CDATA[跑步]]></Value></Text></Item>
</ExtAttr>"""),
    "change_contact:delete_user": _contact("<![CDATA[delete_user]]>", "\n<UserID><![CDATA[lisi2]]></UserID>"),
    "change_contact:create_party": _contact("create_party", """
<Id>2</Id>
<Name><![CDATA[研发部]]></Name>
<ParentId><![CDATA[1]]></ParentId>
<Order>1</Order>"""),
    "change_contact:update_party": _contact("update_party", """
<Id>2</Id>
<Name><![CDATA[研发中心]]></Name>
<ParentId><![CDATA[1]]></ParentId>"""),
    "change_contact:delete_party": _contact("delete_party", "\n<Id>2</Id>"),
    "change_contact:update_tag": _contact("update_tag", """
<TagId>7</TagId>
<AddUserItems><![CDATA[zhangsan,lisi]]></AddUserItems>
<DelUserItems><![CDATA[wangwu]]></DelUserItems>
<AddPartyItems><![CDATA[1,2]]></AddPartyItems>
<DelPartyItems><![CDATA[]]></DelPartyItems>"""),
    # ---- menu events (§6)
    "event:click": _event("click", "\n<EventKey><![CDATA[RUN_BACKUP]]></EventKey>"),
    "event:view": _event("view", "\n<EventKey><![CDATA[https://example.com/dashboard?tab=1&x=2]]></EventKey>"),
    "event:view_miniprogram": _event("view_miniprogram", "\n<EventKey><![CDATA[pages/index/index]]></EventKey>"),
    "event:scancode_push": _event(
        "scancode_push", "\n<EventKey><![CDATA[SCAN_1]]></EventKey>\n<ScanCodeInfo>"
                         "<ScanType><![CDATA[qrcode]]></ScanType><ScanResult><![CDATA[https://example.com/asset/42]]></ScanResult>"
                         "</ScanCodeInfo>"),
    "event:scancode_waitmsg": _event(
        "scancode_waitmsg", "\n<EventKey><![CDATA[SCAN_2]]></EventKey>\n<ScanCodeInfo>"
                            "<ScanType><![CDATA[barcode]]></ScanType><ScanResult><![CDATA[EAN_13,6901234567892]]></ScanResult>"
                            "</ScanCodeInfo>"),
    # the PicList quirk: one <PicList> per picture, as siblings
    "event:pic_sysphoto": _event(
        "pic_sysphoto", "\n<EventKey><![CDATA[PHOTO]]></EventKey>\n<SendPicsInfo><Count>2</Count>"
                        "<PicList><item><PicMd5Sum><![CDATA[1b5f7c23b5bf75682a53e7b6d163e185]]></PicMd5Sum></item></PicList>"
                        "<PicList><item><PicMd5Sum><![CDATA[8d5e2a4f0c1b9e7d6a3f2c1b0e9d8c7a]]></PicMd5Sum></item></PicList>"
                        "</SendPicsInfo>"),
    "event:pic_photo_or_album": _event(
        "pic_photo_or_album", "\n<EventKey><![CDATA[ALBUM]]></EventKey>\n<SendPicsInfo><Count>1</Count>"
                              "<PicList><item><PicMd5Sum><![CDATA[5a105e8b9d40e1329780d62ea2265d8a]]></PicMd5Sum></item></PicList>"
                              "</SendPicsInfo>"),
    "event:pic_weixin": _event(
        "pic_weixin", "\n<EventKey><![CDATA[WEIXIN]]></EventKey>\n<SendPicsInfo><Count>2</Count>"
                      "<PicList><item><PicMd5Sum><![CDATA[ad0234829205b9033196ba818f7a872b]]></PicMd5Sum></item>"
                      "<item><PicMd5Sum><![CDATA[8ad8757baa8564dc136c1e07507f4a98]]></PicMd5Sum></item></PicList>"
                      "</SendPicsInfo>"),
    "event:location_select": _event(
        "location_select", "\n<EventKey><![CDATA[PICK_PLACE]]></EventKey>\n<SendLocationInfo>"
                           "<Location_X><![CDATA[31.230416]]></Location_X><Location_Y><![CDATA[121.473701]]></Location_Y>"
                           "<Scale><![CDATA[15]]></Scale><Label><![CDATA[上海市黄浦区人民大道200号]]></Label>"
                           "<Poiname><![CDATA[人民广场]]></Poiname></SendLocationInfo>\n<AppType><![CDATA[wxwork]]></AppType>"),
    # ---- approval events (§6)
    "event:open_approval_change": _event("open_approval_change", """
<ApprovalInfo>
    <ThirdNo><![CDATA[TN-20261128-0001]]></ThirdNo>
    <OpenSpName><![CDATA[付款申请]]></OpenSpName>
    <OpenTemplateId><![CDATA[1234567890abcdef]]></OpenTemplateId>
    <OpenSpStatus>1</OpenSpStatus>
    <ApplyTime>1764369000</ApplyTime>
    <ApplyUserName><![CDATA[张三]]></ApplyUserName>
    <ApplyUserId><![CDATA[zhangsan]]></ApplyUserId>
    <ApplyUserParty><![CDATA[财务部]]></ApplyUserParty>
    <ApplyUserImage><![CDATA[https://wework.qpic.cn/wwhead/zhangsan/0]]></ApplyUserImage>
    <ApprovalNodes>
        <ApprovalNode>
            <NodeStatus>2</NodeStatus>
            <NodeAttr>1</NodeAttr>
            <NodeType>1</NodeType>
            <Items>
                <Item>
                    <ItemName><![CDATA[李四]]></ItemName>
                    <ItemUserId><![CDATA[lisi]]></ItemUserId>
                    <ItemImage><![CDATA[https://wework.qpic.cn/wwhead/lisi/0]]></ItemImage>
                    <ItemStatus>2</ItemStatus>
                    <ItemSpeech><![CDATA[同意]]></ItemSpeech>
                    <ItemOpTime>1764369500</ItemOpTime>
                </Item>
            </Items>
        </ApprovalNode>
        <ApprovalNode>
            <NodeStatus>1</NodeStatus>
            <NodeAttr>2</NodeAttr>
            <NodeType>2</NodeType>
            <Items>
                <Item><ItemName><![CDATA[王五]]></ItemName><ItemUserId><![CDATA[wangwu]]></ItemUserId><ItemStatus>1</ItemStatus><ItemSpeech><![CDATA[]]></ItemSpeech><ItemOpTime>0</ItemOpTime></Item>
                <Item><ItemName><![CDATA[赵六]]></ItemName><ItemUserId><![CDATA[zhaoliu]]></ItemUserId><ItemStatus>1</ItemStatus><ItemSpeech><![CDATA[]]></ItemSpeech><ItemOpTime>0</ItemOpTime></Item>
            </Items>
        </ApprovalNode>
    </ApprovalNodes>
    <NotifyNodes>
        <NotifyNode><ItemName><![CDATA[钱七]]></ItemName><ItemUserId><![CDATA[qianqi]]></ItemUserId><ItemImage><![CDATA[https://wework.qpic.cn/wwhead/qianqi/0]]></ItemImage></NotifyNode>
    </NotifyNodes>
    <approverstep>1</approverstep>
</ApprovalInfo>""", sender="sys"),
    "event:sys_approval_change": _event("sys_approval_change", """
<ApprovalInfo>
    <SpNo>202611280001</SpNo>
    <SpName><![CDATA[请假]]></SpName>
    <SpStatus>1</SpStatus>
    <TemplateId><![CDATA[3TkZjxugE4Cs9F8dYiGWgt5tdUJqxN3TZ6Mzbk8W]]></TemplateId>
    <ApplyTime>1764369000</ApplyTime>
    <Applyer><UserId><![CDATA[zhangsan]]></UserId><Party><![CDATA[1]]></Party></Applyer>
    <SpRecord>
        <SpStatus>1</SpStatus>
        <ApproverAttr>1</ApproverAttr>
        <Details>
            <Approver><UserId><![CDATA[lisi]]></UserId></Approver>
            <Speech><![CDATA[]]></Speech>
            <SpStatus>1</SpStatus>
            <SpTime>0</SpTime>
        </Details>
    </SpRecord>
    <Notifyer><UserId><![CDATA[wangwu]]></UserId></Notifyer>
    <Comments>
        <CommentUserInfo><UserId><![CDATA[zhangsan]]></UserId></CommentUserInfo>
        <CommentTime>1764369100</CommentTime>
        <CommentContent><![CDATA[周五家里有事]]></CommentContent>
        <CommentId><![CDATA[6987654321012345678]]></CommentId>
    </Comments>
    <StatuChangeEvent>1</StatuChangeEvent>
</ApprovalInfo>""", sender="sys"),
    # ---- card events (§6); taskcard_click spells AgentId
    "event:taskcard_click": (
        "<xml><ToUserName><![CDATA[ww0123456789abcdef]]></ToUserName>"
        "<FromUserName><![CDATA[zhangsan]]></FromUserName><CreateTime>1764370000</CreateTime>"
        "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[taskcard_click]]></Event>"
        "<EventKey><![CDATA[approve]]></EventKey><TaskId><![CDATA[task-20261128-01]]></TaskId>"
        "<AgentId>1000002</AgentId></xml>"),
    "event:template_card_event": _event("template_card_event", """
<EventKey><![CDATA[submit_survey]]></EventKey>
<TaskId><![CDATA[survey-20261128]]></TaskId>
<CardType><![CDATA[multiple_interaction]]></CardType>
<ResponseCode><![CDATA[ResponseCode_7Dk2mQ9xLp0aZ]]></ResponseCode>
<SelectedItems>
    <SelectedItem>
        <QuestionKey><![CDATA[lunch]]></QuestionKey>
        <OptionIds><OptionId><![CDATA[noodles]]></OptionId></OptionIds>
    </SelectedItem>
    <SelectedItem>
        <QuestionKey><![CDATA[drinks]]></QuestionKey>
        <OptionIds><OptionId><![CDATA[tea]]></OptionId><OptionId><![CDATA[juice]]></OptionId></OptionIds>
    </SelectedItem>
</SelectedItems>"""),
    "event:template_card_menu_event": _event("template_card_menu_event", """
<EventKey><![CDATA[mute_alerts]]></EventKey>
<TaskId><![CDATA[alert-20261128-07]]></TaskId>
<CardType><![CDATA[text_notice]]></CardType>
<ResponseCode><![CDATA[ResponseCode_Qm81bVn3sT]]></ResponseCode>"""),
    # ---- other events (§6)
    "event:share_agent_change": _event("share_agent_change"),
    "event:close_inactive_agent": _event("close_inactive_agent"),
    "event:change_external_contact": _event("change_external_contact", """
<ChangeType><![CDATA[add_external_contact]]></ChangeType>
<UserID><![CDATA[zhangsan]]></UserID>
<ExternalUserID><![CDATA[wmXyZ0AbCdEfGhIjKlMnOpQrStUvW]]></ExternalUserID>
<State><![CDATA[expo2026]]></State>
<WelcomeCode><![CDATA[WELCOMECODE_Xp2]]></WelcomeCode>""", sender="sys"),
    "event:unknown": _event("quantum_entangled", """
<EventKey><![CDATA[q1]]></EventKey>
<Widget><Spin>up</Spin><Spin>down</Spin><Label><![CDATA[未知事件]]></Label></Widget>"""),
}
