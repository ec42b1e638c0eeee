from tests.support import ME


async def test_sign_up_then_me(client):
    user = await client.sign_up()
    data = await client.data(ME)
    assert data["me"]["name"] == user["name"]
